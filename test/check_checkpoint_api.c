/* check_checkpoint_api.c — suite checkpoint, api: callbacks and buffers, bad
 * arguments, files (round trip, atomicity, mode, symlinks), allocation. */
#define _XOPEN_SOURCE 700 /* mkdtemp, symlink, lstat */
#include "checkpoint_rig.h"

/* ---- API: callbacks, buffers, files, bad arguments --------------------- */

typedef struct stream {
    unsigned char *p;
    size_t cap, used, fail_after; /* a write or read beyond fail_after fails */
    size_t calls, max_chunk;
} stream;

static int s_write(const void *d, size_t n, void *user)
{
    stream *s = user;
    s->calls++;
    if (n > s->max_chunk)
        s->max_chunk = n;
    if (s->used + n > s->fail_after || s->used + n > s->cap)
        return 1;
    memcpy(s->p + s->used, d, n);
    s->used += n;
    return 0;
}

static int s_read(void *d, size_t n, void *user)
{
    stream *s = user;
    if (s->used + n > s->fail_after || s->used + n > s->cap)
        return 1;
    memcpy(d, s->p + s->used, n);
    s->used += n;
    return 0;
}

START_TEST(callbacks_and_buffers)
{
    victim v;
    stream s;
    size_t w = 0;
    unsigned char small[16];
    victim_make(&v, ALL);
    memset(&s, 0, sizeof s);
    s.cap = v.n;
    s.fail_after = (size_t)-1;
    s.p = malloc(v.n);
    /* the callback writes the same bytes as the buffer */
    rig r;
    rig_make(&r, C_SMART, 1, 1);
    rig_step(&r, 0);
    rig_step(&r, 1);
    TMUST(r.t, regopt_trainer_save(r.t, ALL, s_write, &s));
    same_bytes(v.ck, v.n, s.p, s.used, "callback vs buffer");
    ck_assert_uint_le(s.max_chunk, 65536);
    /* and reads back through the read callback */
    s.used = 0;
    TMUST(v.r.t, regopt_trainer_load(v.r.t, ALL, s_read, &s));
    {
        size_t n;
        unsigned char *got = rig_save(&v.r, ALL, &n);
        same_bytes(v.ck, v.n, got, n, "loaded through the read callback");
        free(got);
    }
    rig_free(&r);
    free(v.before);
    v.before = rig_save(&v.r, ALL, &v.nbefore);
    /* a failing writer: REGOPT_ERR_IO */
    s.used = 0;
    s.fail_after = 100;
    ck_assert_int_eq(regopt_trainer_save(v.r.t, ALL, s_write, &s), REGOPT_ERR_IO);
    /* a failing reader, at the header and in the body */
    memcpy(s.p, v.ck, v.n);
    s.used = 0;
    s.fail_after = 10;
    ck_assert_int_eq(regopt_trainer_load(v.r.t, ALL, s_read, &s), REGOPT_ERR_IO);
    s.used = 0;
    s.fail_after = v.n - 1;
    ck_assert_int_eq(regopt_trainer_load(v.r.t, ALL, s_read, &s), REGOPT_ERR_IO);
    /* a header claiming an absurd size is refused before any allocation */
    {
        unsigned char h[32];
        stream hs;
        memcpy(h, v.ck, 32);
        wr64(h + 16, (uint64_t)1 << 40);
        memset(&hs, 0, sizeof hs);
        hs.p = h;
        hs.cap = 32;
        hs.fail_after = (size_t)-1;
        ck_assert_int_eq(regopt_trainer_load(v.r.t, ALL, s_read, &hs), REGOPT_ERR_CORRUPT);
    }
    victim_untouched(&v, "failed callbacks");
    /* a buffer too small: status, the size needed, nothing written */
    memset(small, 0x5a, sizeof small);
    ck_assert_int_eq(regopt_trainer_save_buffer(v.r.t, ALL, small, sizeof small, &w),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_uint_eq(w, v.nbefore);
    ck_assert_uint_eq(small[0], 0x5a);
    ck_assert_int_eq(regopt_trainer_save_buffer(v.r.t, ALL, NULL, 0, &w),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_uint_eq(w, v.nbefore);
    free(s.p);
    victim_free(&v);
}
END_TEST

START_TEST(bad_arguments)
{
    victim v;
    size_t n;
    victim_make(&v, ALL);
    ck_assert_int_eq(regopt_trainer_checkpoint_size(NULL, 0, &n), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_checkpoint_size(v.r.t, 0, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_checkpoint_size(v.r.t, 4, &n), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(regopt_trainer_save(NULL, 0, s_write, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save(v.r.t, 0, NULL, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save(v.r.t, 0x80, s_write, NULL),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(regopt_trainer_save_buffer(NULL, 0, NULL, 0, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save_buffer(v.r.t, 0, NULL, 10, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save_file(NULL, 0, "/tmp/x"), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save_file(v.r.t, 0, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save_file(v.r.t, 8, "/tmp/x"), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(regopt_trainer_load(NULL, 0, s_read, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load(v.r.t, 0, NULL, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load_buffer(NULL, 0, v.ck, v.n), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, 0, NULL, 10), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, 16, v.ck, v.n),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(regopt_trainer_load_file(NULL, 0, "/tmp/x"), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load_file(v.r.t, 0, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load_file(v.r.t, 0, "/nonexistent/dir/ck"), REGOPT_ERR_IO);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(v.r.t), "/nonexistent/dir/ck"));
    ck_assert_int_eq(regopt_trainer_load_file(v.r.t, 0, "/tmp"), REGOPT_ERR_IO);
    ck_assert_int_eq(regopt_trainer_save_file(v.r.t, 0, "/nonexistent/dir/ck"), REGOPT_ERR_IO);
    ck_assert_int_eq(strcmp(regopt_status_string(REGOPT_ERR_CORRUPT),
                            "REGOPT_ERR_CORRUPT: the checkpoint is damaged"), 0);
    ck_assert_ptr_nonnull(strstr(regopt_status_string(REGOPT_ERR_MISMATCH), "MISMATCH"));
    ck_assert_ptr_nonnull(strstr(regopt_status_string(REGOPT_ERR_IO), "REGOPT_ERR_IO"));
    victim_untouched(&v, "bad arguments");
    victim_free(&v);
}
END_TEST

/* ---- files ------------------------------------------------------------- */

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    unsigned char *b;
    long len;
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc((size_t)len + 1);
    ck_assert_uint_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

START_TEST(file_round_trip_and_atomicity)
{
    char dir[] = "/tmp/regopt_ckdir_XXXXXX", path[64];
    victim v;
    unsigned char *old, *now;
    size_t nold, nnow;
    pid_t pid;
    int status;
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/run.ckpt", dir);
    victim_make(&v, ALL);
    TMUST(v.r.t, regopt_trainer_save_file(v.r.t, ALL, path));
    old = slurp(path, &nold);
    same_bytes(v.before, v.nbefore, old, nold, "file vs buffer");
    ck_assert_int_eq(count_entries(dir), 1);

    /* a writer that fails mid-file (the file size limit) in a child: the
     * old checkpoint stays, byte for byte, and no temporary file remains */
    rig_step(&v.r, 3);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct rlimit rl = {200, 200};
        signal(SIGXFSZ, SIG_IGN);
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
            _exit(3);
        _exit(regopt_trainer_save_file(v.r.t, ALL, path) == REGOPT_ERR_IO ? 0 : 1);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "the limited save did not fail with REGOPT_ERR_IO (exit %d)",
                  WEXITSTATUS(status));
    now = slurp(path, &nnow);
    same_bytes(old, nold, now, nnow, "the old checkpoint after a failed save");
    free(now);
    ck_assert_int_eq(count_entries(dir), 1);

    /* a successful save replaces it, and it loads */
    TMUST(v.r.t, regopt_trainer_save_file(v.r.t, ALL, path));
    now = slurp(path, &nnow);
    ck_assert_int_ne(memcmp(old, now, nold < nnow ? nold : nnow), 0);
    TMUST(v.r.t, regopt_trainer_load_file(v.r.t, ALL, path));
    /* a truncated file is damaged, not an I/O error */
    {
        FILE *f = fopen(path, "wb");
        ck_assert_uint_eq(fwrite(now, 1, nnow / 2, f), nnow / 2);
        fclose(f);
        ck_assert_int_eq(regopt_trainer_load_file(v.r.t, ALL, path), REGOPT_ERR_CORRUPT);
    }
    free(now);
    free(old);
    unlink(path);
    rmdir(dir);
    victim_free(&v);
}
END_TEST

START_TEST(file_mode_and_symlink)
{
    char dir[] = "/tmp/regopt_ckmode_XXXXXX", path[96], link[96], real[96];
    struct stat sb;
    victim v;
    mode_t old;
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/a.ckpt", dir);
    victim_make(&v, ALL);
    old = umask(077);
    TMUST(v.r.t, regopt_trainer_save_file(v.r.t, ALL, path));
    umask(old);
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0600); /* 0666 less the umask */
    ck_assert_int_eq(chmod(path, 0640), 0);
    TMUST(v.r.t, regopt_trainer_save_file(v.r.t, ALL, path));
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0640); /* a replaced file keeps its mode */
    /* through a symbolic link: the link stays, its target gets the bytes */
    snprintf(link, sizeof link, "%s/latest", dir);
    ck_assert_int_eq(symlink("a.ckpt", link), 0);
    rig_step(&v.r, 4);
    TMUST(v.r.t, regopt_trainer_save_file(v.r.t, ALL, link));
    ck_assert_int_eq(lstat(link, &sb), 0);
    ck_assert(S_ISLNK(sb.st_mode));
    {
        size_t na, nb;
        unsigned char *a = slurp(path, &na), *b = rig_save(&v.r, ALL, &nb);
        same_bytes(b, nb, a, na, "the link's target");
        free(a);
        free(b);
    }
    ck_assert_int_eq(count_entries(dir), 2);
    /* a dangling link is an I/O error naming it */
    snprintf(real, sizeof real, "%s/dangling", dir);
    ck_assert_int_eq(symlink("nowhere/x", real), 0);
    ck_assert_int_eq(regopt_trainer_save_file(v.r.t, ALL, real), REGOPT_ERR_IO);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(v.r.t), "dangling"));
    unlink(real);
    unlink(link);
    unlink(path);
    rmdir(dir);
    victim_free(&v);
}
END_TEST

/* A load allocates only temporarily and a step after it still does not. */
START_TEST(allocation_after_load)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    victim v;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *smart, *bregman;
    ck_host h;
    long before;
    regopt_batch b;
    victim_make(&v, ALL);
    memset(&h, 0, sizeof h);
    m = ck_model(&h, "b", 1, &a);
    o = regopt_optimizer_create(REGOPT_ADAMW, &a, NULL);
    t = regopt_trainer_create(m, o, NULL);
    /* the regularizers from the same allocator: every allocation is counted */
    smart = regopt_regularizer_create(REGOPT_REG_SMART, &a, NULL);
    bregman = regopt_regularizer_create(REGOPT_REG_BREGMAN, &a, NULL);
    ck_assert(t && smart && bregman);
    TMUST(t, regopt_trainer_attach(t, smart));
    TMUST(t, regopt_trainer_attach(t, bregman));
    TMUST(t, regopt_trainer_reserve(t, CROWS));
    before = c.allocs - c.frees;
    TMUST(t, regopt_trainer_load_buffer(t, ALL, v.ck, v.n));
    ck_assert_int_eq(c.allocs - c.frees, before); /* the load's scratch is gone */
    before = c.allocs;
    regopt_batch_init(&b);
    b.data = data_x;
    b.rows = CROWS;
    b.labels = data_y;
    TMUST(t, regopt_trainer_step(t, &b, 1));
    ck_assert_int_eq(c.allocs, before);
    regopt_trainer_free(t);
    regopt_regularizer_free(smart);
    regopt_regularizer_free(bregman);
    regopt_optimizer_free(o);
    regopt_model_free(m);
    ck_assert_int_eq(c.allocs, c.frees);
    victim_free(&v);
}
END_TEST

void checkpoint_api_tests(TCase *tc)
{
    tcase_add_test(tc, callbacks_and_buffers);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, file_round_trip_and_atomicity);
    tcase_add_test(tc, allocation_after_load);
    tcase_add_test(tc, file_mode_and_symlink);
}
