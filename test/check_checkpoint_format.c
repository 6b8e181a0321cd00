/* check_checkpoint_format.c — suite checkpoint: format 1 of libregopt 0.x refused,
 * features this library does not know, other regularizers, where format 2
 * puts what, the Bregman teacher and a user term across a resume, and what
 * a newer 1.x writer may add. */
#define _XOPEN_SOURCE 700 /* mkdtemp, symlink, lstat */
#include "checkpoint_rig.h"

/* ---- format 1, features, regularizers (format 2) ----------------------- */

static unsigned char *memdup_(const void *p, size_t n)
{
    unsigned char *d = malloc(n + 64);
    ck_assert_ptr_nonnull(d);
    memcpy(d, p, n);
    return d;
}

/* The victim's state as libregopt 0.x wrote it: format 1, built here from
 * the format-2 sections (see the format 1 description in regopt.h):
 * "trainer" of 64 bytes with the regularizers as a bit mask, the Bregman
 * teacher's flag and beta, and the 0.x statistics 900..922; the teacher's
 * weights in a "teacher" section; options with a pad where format 2 has
 * the owner; no "features", no "reg.N". */
#define V1_STATS 23
static unsigned char *format1_of(const victim *v, size_t *size)
{
    section s[16], o[8];
    size_t n = split(v->ck, s), k = 0, i, nst, cnt, trainable;
    int tr = find_section(s, n, "trainer"), br = find_reg(s, n, REGOPT_REG_BREGMAN), op;
    const unsigned char *st = reg_state(&s[br]);
    unsigned char *out;
    memset(o, 0, sizeof o);
    trainable = (size_t)rd64(s[tr].data + TR_TRAINABLE);
    nst = rd32(s[tr].data + TR_NSTATS);
    ck_assert_uint_le(nst, V1_STATS);

    strcpy(o[k].name, "trainer");
    o[k].size = 64 + 8 * V1_STATS;
    o[k].data = calloc(1, o[k].size);
    memcpy(o[k].data, s[tr].data, 28); /* step, seed, kind, floats per element, primed */
    wr32(o[k].data + 28, 1u << REGOPT_REG_SMART | 1u << REGOPT_REG_BREGMAN);
    wr64(o[k].data + 32, trainable);
    wr32(o[k].data + 40, rd32(st)); /* the teacher holds weights */
    memcpy(o[k].data + 48, st + 8, 8); /* beta of the last step */
    wr32(o[k].data + 56, V1_STATS);
    memcpy(o[k].data + 64, s[tr].data + TR_STATS, 8 * nst);
    k++;
    i = (size_t)find_section(s, n, "model");
    o[k] = s[i], o[k].data = memdup_(s[i].data, s[i].size), k++;
    i = (size_t)find_section(s, n, "moments");
    o[k] = s[i], o[k].data = memdup_(s[i].data, s[i].size), k++;
    ck_assert_uint_eq(rd32(st), 1);
    strcpy(o[k].name, "teacher");
    o[k].size = 4 * trainable;
    o[k].data = memdup_(st + 16, o[k].size);
    k++;
    i = (size_t)find_section(s, n, "params");
    o[k] = s[i], o[k].data = memdup_(s[i].data, s[i].size), k++;
    op = find_section(s, n, "options");
    o[k] = s[op], o[k].data = memdup_(s[op].data, s[op].size);
    cnt = rd32(o[k].data);
    for (i = 0; i < cnt; i++)
        wr32(o[k].data + 8 + OPT_ENTRY * i + OPT_OWNER, 0); /* format 1: pad */
    k++;
    for (i = 0; i < n; i++)
        free(s[i].data);
    out = join(v->ck, o, k, 1, size);
    ck_assert_uint_eq(rd32(out + 8), 1);
    return out;
}

START_TEST(format1_refused)
{
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b;
    victim_make(&v, ALL);
    /* a checkpoint of libregopt 0.x */
    b = format1_of(&v, &size);
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "0.x", "format 1");
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, 0, b, size), REGOPT_ERR_UNSUPPORTED);
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, REGOPT_CHECKPOINT_PARAMS, b, size),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(v.r.t), "0.x"));
    victim_untouched(&v, "format 1, other flags");
    free(b);
    /* the version decides: format-2 sections under a version-1 header */
    n = split(v.ck, s);
    b = join(v.ck, s, n, 1, &size);
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "0.x", "version 1");
    free(b);
    /* and a version 0 is no format at all */
    n = split(v.ck, s);
    b = join(v.ck, s, n, 0, &size);
    {
        regopt_status st = regopt_trainer_load_buffer(v.r.t, ALL, b, size);
        ck_assert_msg(st == REGOPT_ERR_CORRUPT || st == REGOPT_ERR_UNSUPPORTED, "version 0: %s",
                      regopt_status_string(st));
    }
    victim_untouched(&v, "version 0");
    free(b);
    victim_free(&v);
}
END_TEST

/* The "features" section: the victim needs SMART (bit 2) and Bregman (bit
 * 3); a required bit this library does not know is refused by name. */
START_TEST(unknown_feature_refused)
{
    victim v;
    section s[16];
    size_t n, size, cnt, e;
    unsigned char *b, *f;
    int i, seen = 0;
    victim_make(&v, ALL);
    n = split(v.ck, s);
    i = find_section(s, n, "features");
    f = s[i].data;
    ck_assert_uint_eq(rd64(f), (1u << 2) | (1u << 3));
    cnt = rd32(f + FEAT_COUNT);
    ck_assert_uint_eq(rd32(f + FEAT_COUNT + 4), 0); /* pad */
    ck_assert_uint_eq(s[i].size, FEAT_ENTRIES + FEAT_ENTRY * cnt);
    for (e = 0; e < cnt; e++) {
        const unsigned char *p = f + FEAT_ENTRIES + FEAT_ENTRY * e;
        char name[21];
        memcpy(name, p + 4, 20);
        name[20] = '\0';
        if (rd32(p) == 2) {
            seen |= 1;
            ck_assert_str_eq(name, "smart");
        }
        if (rd32(p) == 3) {
            seen |= 2;
            ck_assert_str_eq(name, "bregman");
        }
    }
    ck_assert_msg(seen == 3, "features of smart and bregman not both named (%zu entries)", cnt);
    /* bit 40, "future", required */
    wr64(f, rd64(f) | (uint64_t)1 << 40);
    memset(f + s[i].size, 0, FEAT_ENTRY);
    wr32(f + s[i].size, 40);
    memcpy(f + s[i].size + 4, "future", 6);
    wr32(f + FEAT_COUNT, (uint32_t)cnt + 1);
    s[i].size += FEAT_ENTRY;
    b = join(v.ck, s, n, FORMAT, &size); /* every CRC recomputed */
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "future", "feature bit 40");
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, 0, b, size), REGOPT_ERR_UNSUPPORTED);
    victim_untouched(&v, "feature bit 40, flags 0");
    free(b);
    /* the same entry first in the table */
    n = split(v.ck, s);
    i = find_section(s, n, "features");
    f = s[i].data;
    memmove(f + FEAT_ENTRIES + FEAT_ENTRY, f + FEAT_ENTRIES, FEAT_ENTRY * cnt);
    memset(f + FEAT_ENTRIES, 0, FEAT_ENTRY);
    wr32(f + FEAT_ENTRIES, 40);
    memcpy(f + FEAT_ENTRIES + 4, "future", 6);
    wr64(f, rd64(f) | (uint64_t)1 << 40);
    wr32(f + FEAT_COUNT, (uint32_t)cnt + 1);
    s[i].size += FEAT_ENTRY;
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "future", "feature bit 40 first");
    free(b);
    victim_free(&v);
}
END_TEST

static int occurrences(const char *hay, const char *needle)
{
    int k = 0;
    const char *p = hay;
    while ((p = strstr(p, needle)) != NULL)
        k++, p += strlen(needle);
    return k;
}

/* Load ck into a trained rig of config (built with its options); returns
 * the status; the rig must be untouched after a failure. */
static regopt_status load_checked(rig *r, const unsigned char *ck, size_t n, char *msg,
                                  size_t cap, const char *what)
{
    size_t nb, na;
    unsigned char *before = rig_save(r, ALL, &nb), *after;
    regopt_status st = regopt_trainer_load_buffer(r->t, ALL, ck, n);
    snprintf(msg, cap, "%s", regopt_trainer_message(r->t));
    if (st != REGOPT_OK) {
        after = rig_save(r, ALL, &na);
        same_bytes(before, nb, after, na, what);
        free(after);
    }
    free(before);
    return st;
}

/* A checkpoint of SAM + R-Drop and a trainer with SAM only (and the other
 * way round): REGOPT_ERR_MISMATCH naming both lists. The same kinds
 * attached in the other order load and resume bit for bit. */
START_TEST(other_regularizers_refused)
{
    rig a, b;
    unsigned char *ck_both, *ck_sam;
    size_t n_both, n_sam;
    char msg[256];
    regopt_status st;
    int s;
    rig_make(&a, C_SAM_RDROP, 1, 1);
    for (s = 0; s < 2; s++)
        rig_step(&a, s);
    ck_both = rig_save(&a, ALL, &n_both);
    rig_free(&a);
    rig_make(&a, C_SAM, 1, 1);
    for (s = 0; s < 2; s++)
        rig_step(&a, s);
    ck_sam = rig_save(&a, ALL, &n_sam);

    /* SAM + R-Drop into SAM */
    st = load_checked(&a, ck_both, n_both, msg, sizeof msg, "sam+rdrop into sam");
    ck_assert_msg(st == REGOPT_ERR_MISMATCH, "got %s (%s)", regopt_status_string(st), msg);
    ck_assert_msg(strstr(msg, "rdrop") != NULL, "message \"%s\" lacks rdrop", msg);
    ck_assert_msg(occurrences(msg, "sam") >= 2, "message \"%s\" does not name both lists", msg);
    rig_free(&a);

    /* SAM into SAM + R-Drop */
    rig_make(&b, C_SAM_RDROP, 1, 1);
    rig_step(&b, 0);
    st = load_checked(&b, ck_sam, n_sam, msg, sizeof msg, "sam into sam+rdrop");
    ck_assert_msg(st == REGOPT_ERR_MISMATCH, "got %s (%s)", regopt_status_string(st), msg);
    ck_assert_msg(strstr(msg, "rdrop") != NULL, "message \"%s\" lacks rdrop", msg);
    ck_assert_msg(occurrences(msg, "sam") >= 2, "message \"%s\" does not name both lists", msg);
    rig_free(&b);

    /* a second R-Drop is not possible, a SAM + R-Drop trainer with its
       regularizers attached the other way round is the same trainer */
    {
        size_t nmid, i;
        unsigned char *mid = interrupted(C_SAM_RDROP, ALL, &nmid);
        rig_make(&a, C_SAM_RDROP, 1, 1);
        rig_make(&b, C_ADAMW, 0, 0);
        b.rdrop = tu_add(b.t, REGOPT_REG_RDROP);
        b.sam = tu_add(b.t, REGOPT_REG_SAM);
        ck_assert_int_eq(regopt_trainer_attach(b.t, tu_new(REGOPT_REG_RDROP)),
                         REGOPT_ERR_STATE);
        ck_assert_uint_eq(regopt_trainer_regularizer_count(b.t), 2);
        for (i = 0; i < 2; i++)
            ck_assert_int_eq(
                regopt_regularizer_get_kind(regopt_trainer_regularizer_at(b.t, i)),
                regopt_regularizer_get_kind(regopt_trainer_regularizer_at(a.t, i)));
        rig_free(&a);
        TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, mid, nmid));
        finish_and_compare(&b, C_SAM_RDROP);
        free(mid);
    }
    free(ck_both);
    free(ck_sam);
}
END_TEST

/* Where format 2 puts what (a saved SMART + Bregman rig after two steps),
 * read with this file's own parser and compared with what the API says. */
START_TEST(format2_layout)
{
    rig a;
    section s[16];
    unsigned char *ck;
    size_t n, nck, i, j, nreg, trainable = CD * CK + CK;
    const char *const names[] = {"trainer", "features", "model", "moments", "params",
                                 "options"};
    int tr, op;
    rig_make(&a, C_SMART, 1, 1);
    rig_step(&a, 0);
    rig_step(&a, 1);
    ck = rig_save(&a, ALL, &nck);
    ck_assert_int_eq(memcmp(ck, "REGOPTCK", 8), 0);
    ck_assert_uint_eq(rd32(ck + 8), FORMAT);
    ck_assert_uint_eq(rd64(ck + 16), nck);
    n = split(ck, s);
    for (i = 0; i < sizeof names / sizeof names[0]; i++)
        (void)find_section(s, n, names[i]);

    /* "trainer" */
    tr = find_section(s, n, "trainer");
    ck_assert_uint_eq(rd64(s[tr].data), 2);
    ck_assert_uint_eq(rd64(s[tr].data + 8), 1234567);
    ck_assert_uint_eq(rd32(s[tr].data + 16), REGOPT_ADAMW);
    ck_assert_uint_eq(rd32(s[tr].data + 20), 2);
    ck_assert_uint_eq(rd32(s[tr].data + 24), 0);
    nreg = rd32(s[tr].data + TR_REGS);
    ck_assert_uint_eq(nreg, 2);
    ck_assert_uint_eq(nreg, regopt_trainer_regularizer_count(a.t));
    ck_assert_uint_eq(rd64(s[tr].data + TR_TRAINABLE), trainable);
    ck_assert_uint_eq(rd32(s[tr].data + TR_NSTATS), REGOPT_STAT_BACKWARD_CALLS - REGOPT_STAT_LOSS + 1);
    ck_assert_uint_eq(rd32(s[tr].data + TR_NSTATS + 4), 0);
    ck_assert_uint_eq(s[tr].size, TR_STATS + 8 * (size_t)rd32(s[tr].data + TR_NSTATS));
    ck_assert_int_eq(stat_int(a.t, REGOPT_STAT_STEP), 2);
    for (i = 0; i < rd32(s[tr].data + TR_NSTATS); i++) {
        double want = stat_of_trainer(a.t, (regopt_key)(REGOPT_STAT_LOSS + (int)i)), got;
        if (REGOPT_STAT_LOSS + (int)i == REGOPT_STAT_STEP)
            continue; /* stat.step is the step count @0, not kept in the array */
        memcpy(&got, s[tr].data + TR_STATS + 8 * i, 8);
        ck_assert_msg(memcmp(&got, &want, 8) == 0, "trainer statistic %zu: %g, want %g", i,
                      got, want);
    }

    /* "reg.N": the attached regularizers in step order */
    for (j = 0; j < nreg; j++) {
        regopt_regularizer *r = regopt_trainer_regularizer_at(a.t, j);
        regopt_regularizer_kind kind = regopt_regularizer_get_kind(r), k;
        const char *kname = NULL;
        char secname[24], name[25];
        size_t nst, m, ki, si = 0;
        regopt_key key;
        unsigned char *d;
        int x;
        snprintf(secname, sizeof secname, "reg.%zu", j);
        x = find_section(s, n, secname);
        d = s[x].data;
        ck_assert_uint_eq(rd32(d + REG_KIND), kind);
        ck_assert_uint_eq(rd32(d + REG_INSTANCE), 0);
        for (ki = 0; regopt_regularizer_kind_info(ki, &k, &kname, NULL) == REGOPT_OK; ki++)
            if (k == kind)
                break;
        ck_assert_ptr_nonnull(kname);
        memcpy(name, d + REG_NAME, 24);
        name[24] = '\0';
        ck_assert_str_eq(name, kname);
        nst = rd32(d + REG_NSTATS);
        ck_assert_uint_eq(rd32(d + REG_NSTATS + 4), 0);
        m = (size_t)rd64(d + REG_STATE_SIZE);
        ck_assert_uint_eq(s[x].size, REG_STATS + 8 * nst + m);
        /* its statistics in key order: the read-only keys named "<kind>." */
        for (ki = 0; regopt_key_at(ki, &key) == REGOPT_OK; ki++) {
            const char *kn = NULL;
            uint32_t flags = 0;
            double want, got;
            MUST(regopt_key_info(key, &kn, NULL, NULL, NULL, NULL, &flags));
            if (!(flags & REGOPT_KEY_READ_ONLY) || strncmp(kn, kname, strlen(kname)) != 0 ||
                kn[strlen(kname)] != '.')
                continue;
            ck_assert_uint_lt(si, nst);
            want = rstat(r, key);
            memcpy(&got, d + REG_STATS + 8 * si, 8);
            ck_assert_msg(memcmp(&got, &want, 8) == 0, "%s: statistic %zu (%s): %g, want %g",
                          secname, si, kn, got, want);
            si++;
        }
        ck_assert_uint_eq(si, nst);
        if (kind == REGOPT_REG_BREGMAN) {
            double beta;
            ck_assert_uint_eq(m, 16 + 4 * trainable);
            ck_assert_uint_eq(rd32(d + REG_STATS + 8 * nst), 1);
            ck_assert_uint_eq(rd32(d + REG_STATS + 8 * nst + 4), 0);
            memcpy(&beta, d + REG_STATS + 8 * nst + 8, 8);
            ck_assert(beta == rstat(r, REGOPT_STAT_BREGMAN_BETA));
            ck_assert(beta == 0.5);
        } else {
            ck_assert_uint_eq(m, 0);
        }
    }

    /* "options": the regularizers' keys are owned by their "reg.N" */
    op = find_section(s, n, "options");
    {
        size_t cnt = rd32(s[op].data), seen_mu = 0;
        ck_assert_uint_eq(s[op].size, 8 + OPT_ENTRY * cnt);
        for (i = 0; i < cnt; i++) {
            const unsigned char *p = s[op].data + 8 + OPT_ENTRY * i;
            uint32_t key = rd32(p), owner = rd32(p + OPT_OWNER);
            if (key < 1000) {
                ck_assert_msg(owner == NO_OWNER, "key %u owned by %u", key, owner);
                continue;
            }
            ck_assert_msg(owner < nreg, "key %u: owner %u of %zu", key, owner, nreg);
            if (key == REGOPT_BREGMAN_MU) {
                double mu;
                ck_assert_int_eq(regopt_regularizer_get_kind(
                                     regopt_trainer_regularizer_at(a.t, owner)),
                                 REGOPT_REG_BREGMAN);
                memcpy(&mu, p + 16, 8);
                ck_assert(mu == 2.0);
                seen_mu++;
            }
            if (key == REGOPT_SMART_LAMBDA)
                ck_assert_int_eq(regopt_regularizer_get_kind(
                                     regopt_trainer_regularizer_at(a.t, owner)),
                                 REGOPT_REG_SMART);
        }
        ck_assert_uint_eq(seen_mu, 1);
    }
    for (i = 0; i < n; i++)
        free(s[i].data);
    free(ck);
    rig_free(&a);
}
END_TEST

/* Bregman alone: its beta switches at step 5 (bregman.switch_step), after
 * the resume at step 3, so the checkpoint's options carry it; and the
 * teacher's weights in the checkpoint are what the resumed run uses (one
 * changed weight changes the run). */
START_TEST(resume_bregman_teacher)
{
    rig b;
    section s[16];
    unsigned char *mid, *forged, *ref, *end;
    size_t nmid, n, nforged, nref, nend, i;
    int st, x, differs = 0;
    float w0;
    mid = interrupted(C_BREGMAN, ALL, &nmid);
    rig_make(&b, C_BREGMAN, 0, 0); /* defaults: beta 0.99, no switch step */
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, mid, nmid));
    for (st = K_STEPS; st < N_STEPS; st++) {
        rig_step(&b, st);
        /* the EMA runs in double: the beta applied is the one set */
        ck_assert_msg(rstat(b.bregman, REGOPT_STAT_BREGMAN_BETA) == (st < 5 ? 0.6 : 0.9),
                      "step %d: beta %g", st, rstat(b.bregman, REGOPT_STAT_BREGMAN_BETA));
        ck_assert(rstat(b.bregman, REGOPT_STAT_BREGMAN_D) > 0.0);
    }
    rig_free(&b);

    n = split(mid, s);
    x = find_reg(s, n, REGOPT_REG_BREGMAN);
    ck_assert_uint_eq(rd32(reg_state(&s[x])), 1);
    memcpy(&w0, reg_state(&s[x]) + 16, 4);
    w0 += 0.25f;
    memcpy(reg_state(&s[x]) + 16, &w0, 4);
    forged = join(mid, s, n, FORMAT, &nforged);
    rig_make(&b, C_BREGMAN, 0, 0);
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, forged, nforged));
    for (st = K_STEPS; st < N_STEPS; st++)
        rig_step(&b, st);
    end = rig_save(&b, ALL, &nend);
    ref = reference(C_BREGMAN, &nref);
    ck_assert_uint_eq(nref, nend);
    for (i = 0; i < nref; i++)
        differs |= ref[i] != end[i];
    ck_assert_msg(differs, "another teacher gave the same run: the teacher is not used");
    rig_free(&b);
    free(mid);
    free(forged);
    free(ref);
    free(end);
}
END_TEST

/* A user term's state travels in its "reg.N" section: the resume tests
 * cover C_TERM; here a term of another name is another set of
 * regularizers, and a term that refuses its state fails the load with
 * REGOPT_ERR_CORRUPT and changes nothing. */
START_TEST(term_name_and_state)
{
    rig a;
    section s[16];
    unsigned char *mid;
    size_t nmid, n;
    char msg[256];
    regopt_status st;
    int x;
    mid = interrupted(C_TERM, ALL, &nmid);
    /* the section: kind, the term's name, its 8 state bytes (3 commits) */
    n = split(mid, s);
    x = find_reg(s, n, REGOPT_REG_TERM);
    ck_assert_str_eq((const char *)s[x].data + REG_NAME, "decay.term");
    ck_assert_uint_eq(rd64(s[x].data + REG_STATE_SIZE), 8);
    ck_assert_uint_eq(rd64(reg_state(&s[x])), K_STEPS);
    for (x = 0; x < (int)n; x++)
        free(s[x].data);

    term_name = "other.term";
    rig_make(&a, C_TERM, 1, 1);
    term_name = "decay.term";
    rig_step(&a, 0);
    st = load_checked(&a, mid, nmid, msg, sizeof msg, "a term of another name");
    ck_assert_msg(st == REGOPT_ERR_MISMATCH, "got %s (%s)", regopt_status_string(st), msg);
    ck_assert_msg(strstr(msg, "decay.term") && strstr(msg, "other.term"),
                  "message \"%s\" does not name both terms", msg);
    ck_assert_uint_eq(a.ts.commits, 1);
    rig_free(&a);

    /* an option refused after the term could have taken its state: the
       term keeps its own (nothing changes on a failed load) */
    {
        unsigned char *bad;
        size_t nbad;
        n = split(mid, s);
        forge_option(s, n, REGOPT_OPT_LR, -1, -1.0);
        bad = join(mid, s, n, FORMAT, &nbad);
        rig_make(&a, C_TERM, 1, 1);
        rig_step(&a, 0);
        st = load_checked(&a, bad, nbad, msg, sizeof msg, "term, optimizer.lr -1");
        ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "got %s (%s)", regopt_status_string(st),
                      msg);
        ck_assert_msg(a.ts.commits == 1, "the term's state is %llu after a refused load",
                      (unsigned long long)a.ts.commits);
        rig_free(&a);
        free(bad);
    }

    rig_make(&a, C_TERM, 1, 1);
    rig_step(&a, 0);
    a.ts.fail_load = 1;
    st = load_checked(&a, mid, nmid, msg, sizeof msg, "load_state refused");
    ck_assert_msg(st == REGOPT_ERR_CORRUPT, "got %s (%s)", regopt_status_string(st), msg);
    ck_assert_uint_eq(a.ts.commits, 1);
    a.ts.fail_load = 0;
    TMUST(a.t, regopt_trainer_load_buffer(a.t, ALL, mid, nmid));
    ck_assert_uint_eq(a.ts.commits, K_STEPS);
    finish_and_compare(&a, C_TERM);
    free(mid);
}
END_TEST

/* What a newer 1.x writer may add loads here: an option key this version
 * does not know (of a regularizer too: skipped), more or fewer statistics
 * in a "reg.N" section (the known ones read, the missing ones 0). An
 * unknown required feature is refused by name even when the optimizer
 * differs too; a nonzero pad in "options" is damage. */
START_TEST(newer_writer_accepted)
{
    victim v;
    section s[16];
    size_t n, size, cnt, k;
    unsigned char *b, *o, *g;
    int i, j;
    double d0, want0;
    regopt_key unknown = 1249; /* in SMART's range, no key of this version */
    ck_assert_int_eq(regopt_key_info(unknown, NULL, NULL, NULL, NULL, NULL, NULL),
                     REGOPT_ERR_UNKNOWN_KEY);
    victim_make(&v, ALL);

    /* an unknown key owned by regularizer 0 */
    n = split(v.ck, s);
    i = find_section(s, n, "options");
    o = s[i].data;
    cnt = rd32(o);
    memset(o + 8 + OPT_ENTRY * cnt, 0, OPT_ENTRY);
    wr32(o + 8 + OPT_ENTRY * cnt, (uint32_t)unknown);
    wr32(o + 8 + OPT_ENTRY * cnt + 4, 0xffffffffu);          /* no group */
    wr32(o + 8 + OPT_ENTRY * cnt + 8, REGOPT_TYPE_DOUBLE);
    wr32(o + 8 + OPT_ENTRY * cnt + OPT_OWNER, 0);             /* reg.0 */
    wr32(o, (uint32_t)cnt + 1);
    s[i].size += OPT_ENTRY;
    b = join(v.ck, s, n, FORMAT, &size);
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, b, size));
    free(b);

    /* one statistic more, then one fewer, in Bregman's section */
    for (k = 0; k < 2; k++) {
        uint32_t ns;
        n = split(v.ck, s);
        j = find_reg(s, n, REGOPT_REG_BREGMAN);
        g = s[j].data;
        ns = rd32(g + REG_NSTATS);
        memcpy(&want0, g + REG_STATS, 8); /* little-endian hosts: the test's own read */
        if (k == 0) { /* insert 8 bytes after the statistics */
            memmove(g + REG_STATS + 8 * (ns + 1), g + REG_STATS + 8 * ns,
                    s[j].size - REG_STATS - 8 * ns);
            memset(g + REG_STATS + 8 * ns, 0x41, 8);
            wr32(g + REG_NSTATS, ns + 1);
            s[j].size += 8;
        } else { /* drop the last one */
            memmove(g + REG_STATS + 8 * (ns - 1), g + REG_STATS + 8 * ns,
                    s[j].size - REG_STATS - 8 * ns);
            wr32(g + REG_NSTATS, ns - 1);
            s[j].size -= 8;
        }
        b = join(v.ck, s, n, FORMAT, &size);
        TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, b, size));
        d0 = rstat(v.r.bregman, REGOPT_STAT_BREGMAN_D);
        ck_assert_msg(d0 == want0, "bregman.d %g, the checkpoint's %g", d0, want0);
        if (k == 1)
            ck_assert_double_eq(rstat(v.r.bregman, REGOPT_STAT_BREGMAN_BETA), 0.0);
        free(b);
    }
    victim_free(&v);

    /* a nonzero pad after the option count */
    victim_make(&v, ALL);
    n = split(v.ck, s);
    i = find_section(s, n, "options");
    wr32(s[i].data + 4, 1);
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "options", "options pad");
    free(b);
    victim_free(&v);
}
END_TEST

/* A newer writer's feature and another optimizer: the feature is named. */
START_TEST(unknown_feature_named_first)
{
    victim v;
    section s[16];
    size_t n, size, cnt;
    unsigned char *b, *f;
    int i;
    regopt_status st;
    rig other;
    victim_make(&v, ALL);
    n = split(v.ck, s);
    i = find_section(s, n, "features");
    f = s[i].data;
    cnt = rd32(f + FEAT_COUNT);
    wr64(f, rd64(f) | (uint64_t)1 << 41);
    memset(f + s[i].size, 0, FEAT_ENTRY);
    wr32(f + s[i].size, 41);
    memcpy(f + s[i].size + 4, "later", 5);
    wr32(f + FEAT_COUNT, (uint32_t)cnt + 1);
    s[i].size += FEAT_ENTRY;
    b = join(v.ck, s, n, FORMAT, &size);
    rig_make(&other, C_SGD, 0, 0); /* SGD, no regularizers: two mismatches too */
    st = regopt_trainer_load_buffer(other.t, ALL, b, size);
    ck_assert_msg(st == REGOPT_ERR_UNSUPPORTED, "got %s (%s)", regopt_status_string(st),
                  regopt_trainer_message(other.t));
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(other.t), "later"));
    rig_free(&other);
    free(b);
    victim_free(&v);
}
END_TEST

void checkpoint_format_tests(TCase *tc)
{
    tcase_add_test(tc, format1_refused);
    tcase_add_test(tc, unknown_feature_refused);
    tcase_add_test(tc, unknown_feature_named_first);
    tcase_add_test(tc, newer_writer_accepted);
    tcase_add_test(tc, other_regularizers_refused);
    tcase_add_test(tc, format2_layout);
    tcase_add_test(tc, resume_bregman_teacher);
    tcase_add_test(tc, term_name_and_state);
}
