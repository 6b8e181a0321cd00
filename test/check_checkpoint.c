/* check_checkpoint.c — save and resume: training k steps, saving, loading
 * into a fresh trainer (and a fresh process) and training N - k more gives
 * the same bits as N uninterrupted steps, for plain AdamW, SGD momentum,
 * SAM, GSAM, R-Drop, SMART with its Bregman teacher, SMART+SAM, SAM+R-Drop
 * and Bregman alone (its beta switching after the resume); every kind of
 * damage is refused with the right status and leaves the trainer untouched
 * (every truncation, every single-bit flip, forged sections, format 1 of
 * libregopt 0.x, features this library does not know, other regularizers);
 * unknown sections are skipped; saving to a path is atomic. Checkpoints are
 * format 2: the forgeries below read and write its layout with their own
 * code (offsets from the format description), not the library's.
 *
 * Host: z = (x + nu) .* m W + b over D inputs, with an inverted-dropout
 * mask m drawn from the pass seed (so the seeds matter), the SMART
 * perturbation nu on the inputs and d(input) for the adversarial passes. */
#define _XOPEN_SOURCE 700 /* mkdtemp, symlink, lstat */
#include "checkpoint_rig.h"

/* Resume within the process; the checkpoint carries weights, moments,
 * teacher, seed and options into a rig built with defaults and garbage. */
START_TEST(resume_in_process)
{
    int config = _i;
    rig b;
    size_t nmid;
    unsigned char *mid = interrupted(config, ALL, &nmid);
    rig_make(&b, config, 0, 0);
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, mid, nmid));
    ck_assert_float_eq(b.h.frozen[0], 0.5f); /* frozen tensors come back too */
    finish_and_compare(&b, config);
    free(mid);
}
END_TEST

/* The host configures options itself and loads state and weights only. */
START_TEST(resume_without_options)
{
    int config = _i;
    rig b;
    size_t nmid;
    unsigned char *mid = interrupted(config, REGOPT_CHECKPOINT_PARAMS, &nmid);
    rig_make(&b, config, 0, 1);
    TMUST(b.t, regopt_trainer_set_int(b.t, REGOPT_TRAINER_SEED, 99)); /* the RNG comes back */
    TMUST(b.t, regopt_trainer_load_buffer(b.t, REGOPT_CHECKPOINT_PARAMS, mid, nmid));
    finish_and_compare(&b, config);
    free(mid);
}
END_TEST

/* A fresh process: a child trains k steps and saves to a file; this
 * process, which never trained, resumes from the file. */
START_TEST(resume_fresh_process)
{
    int config = _i, s, status;
    char path[] = "/tmp/regopt_ckpt_XXXXXX";
    rig b;
    pid_t pid;
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        rig a;
        rig_make(&a, config, 1, 1);
        for (s = 0; s < K_STEPS; s++)
            rig_step(&a, s);
        _exit(regopt_trainer_save_file(a.t, ALL, path) == REGOPT_OK ? 0 : 1);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the saving child failed");
    rig_make(&b, config, 0, 0);
    TMUST(b.t, regopt_trainer_load_file(b.t, ALL, path));
    finish_and_compare(&b, config);
    unlink(path);
}
END_TEST

/* The counter-check: without the checkpoint's state (or with a wrong
 * seed) the run differs, so the equality above is not vacuous. */
START_TEST(resume_needs_the_state)
{
    rig a, b;
    unsigned char *ref, *mid, *end;
    size_t nref, nmid, nend, i;
    int s, differs = 0;
    ref = reference(C_RDROP, &nref);
    rig_make(&a, C_RDROP, 1, 1);
    for (s = 0; s < K_STEPS; s++)
        rig_step(&a, s);
    mid = rig_save(&a, ALL, &nmid);
    rig_free(&a);
    rig_make(&b, C_RDROP, 0, 0);
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, mid, nmid));
    TMUST(b.t, regopt_trainer_set_int(b.t, REGOPT_TRAINER_SEED, 7)); /* other dropout */
    for (s = K_STEPS; s < N_STEPS; s++)
        rig_step(&b, s);
    end = rig_save(&b, ALL, &nend);
    ck_assert_uint_eq(nref, nend);
    for (i = 0; i < nref; i++)
        differs |= ref[i] != end[i];
    ck_assert_msg(differs, "another seed gave the same run: the test could not fail");
    rig_free(&b);
    free(ref);
    free(mid);
    free(end);
}
END_TEST

Suite *suite_checkpoint(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("resume");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, resume_in_process, 0, C_N);
    tcase_add_loop_test(tc, resume_without_options, 0, C_N);
    tcase_add_loop_test(tc, resume_fresh_process, 0, C_N);
    tcase_add_test(tc, resume_needs_the_state);
    suite_add_tcase(s, tc);
    tc = tcase_create("damage");
    tcase_set_timeout(tc, 120);
    checkpoint_damage_tests(tc);
    checkpoint_options_tests(tc);
    checkpoint_format_tests(tc);
    checkpoint_saved_tests(tc);
    suite_add_tcase(s, tc);
    tc = tcase_create("api");
    tcase_set_timeout(tc, 60);
    checkpoint_api_tests(tc);
    suite_add_tcase(s, tc);
    return s;
}
