/* check_checkpoint_damage.c — suite checkpoint, damage: every truncation, every
 * single-bit flip and random damage are refused and leave the trainer
 * untouched; forged sections (rebuilt with their own CRCs) and forged
 * values behind valid CRCs are refused; unknown sections are skipped. */
#define _XOPEN_SOURCE 700 /* mkdtemp, symlink, lstat */
#include "checkpoint_rig.h"

START_TEST(every_truncation)
{
    victim v;
    size_t len;
    victim_make(&v, ALL);
    for (len = 0; len < v.n; len++) {
        regopt_status st = regopt_trainer_load_buffer(v.r.t, ALL, v.ck, len);
        ck_assert_msg(st == REGOPT_ERR_CORRUPT, "length %zu of %zu: %s", len, v.n,
                      regopt_status_string(st));
    }
    victim_untouched(&v, "truncations");
    /* the untruncated checkpoint loads: the failures above were the cuts */
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, v.ck, v.n));
    victim_free(&v);
}
END_TEST

START_TEST(every_bit_flip)
{
    victim v;
    size_t i;
    int bit;
    victim_make(&v, ALL);
    for (i = 0; i < v.n; i++)
        for (bit = 0; bit < 8; bit++) {
            regopt_status st;
            v.ck[i] ^= (unsigned char)(1u << bit);
            st = regopt_trainer_load_buffer(v.r.t, ALL, v.ck, v.n);
            v.ck[i] ^= (unsigned char)(1u << bit);
            ck_assert_msg(st == REGOPT_ERR_CORRUPT || (st == REGOPT_ERR_UNSUPPORTED && i >= 8 &&
                                                       i < 12),
                          "flip of bit %d of byte %zu/%zu: %s", bit, i, v.n,
                          regopt_status_string(st));
        }
    victim_untouched(&v, "bit flips");
    victim_free(&v);
}
END_TEST

START_TEST(random_damage)
{
    victim v;
    unsigned char *copy;
    uint64_t x = 88172645463325252ull;
    int round;
    victim_make(&v, ALL);
    copy = malloc(v.n);
    for (round = 0; round < 2000; round++) {
        int k, flips;
        regopt_status st;
        memcpy(copy, v.ck, v.n);
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        flips = 1 + (int)(x % 8);
        for (k = 0; k < flips; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            copy[(x >> 8) % v.n] ^= (unsigned char)(1 + x % 255);
        }
        st = regopt_trainer_load_buffer(v.r.t, ALL, copy, v.n);
        ck_assert_msg(st != REGOPT_OK || memcmp(copy, v.ck, v.n) == 0,
                      "round %d: damaged checkpoint accepted", round);
    }
    victim_untouched(&v, "random damage");
    free(copy);
    victim_free(&v);
}
END_TEST

START_TEST(rebuilt_checkpoint_loads)
{
    /* the independent writer above reproduces the library's bytes exactly */
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b;
    victim_make(&v, ALL);
    n = split(v.ck, s);
    b = join(v.ck, s, n, FORMAT, &size);
    same_bytes(v.ck, v.n, b, size, "rebuilt");
    free(b);
    victim_free(&v);
}
END_TEST

START_TEST(unknown_section_skipped)
{
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b, *want;
    victim_make(&v, ALL);
    n = split(v.ck, s);
    /* a newer writer's section, in the middle of the table */
    memmove(&s[2], &s[1], (n - 1) * sizeof s[0]);
    memset(&s[1], 0, sizeof s[1]);
    strcpy(s[1].name, "future.thing");
    s[1].size = 40;
    s[1].data = malloc(40);
    memset(s[1].data, 0xab, 40);
    b = join(v.ck, s, n + 1, FORMAT, &size);
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, b, size));
    /* it loaded the same state as the plain checkpoint */
    {
        size_t nw;
        unsigned char *got = rig_save(&v.r, ALL, &nw);
        want = v.ck;
        same_bytes(want, v.n, got, nw, "state after a load with an unknown section");
        free(got);
    }
    free(b);
    victim_free(&v);
}
END_TEST

START_TEST(forged_sections)
{
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b;
    int i;
    victim_make(&v, ALL);

    /* a newer format version */
    n = split(v.ck, s);
    b = join(v.ck, s, n, FORMAT + 1, &size);
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "newer", "version 3");
    free(b);

    /* an option out of range: optimizer.lr = -1 */
    n = split(v.ck, s);
    forge_option(s, n, REGOPT_OPT_LR, -1, -1.0);
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_OUT_OF_RANGE, "optimizer.lr", "lr -1");
    free(b);

    /* a section missing */
    n = split(v.ck, s);
    i = find_section(s, n, "moments");
    free(s[i].data);
    memmove(&s[i], &s[i + 1], (n - (size_t)i - 1) * sizeof s[0]);
    b = join(v.ck, s, n - 1, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "moments", "no moments");
    free(b);

    /* the Bregman section (its teacher's weights) of the wrong size */
    n = split(v.ck, s);
    i = find_reg(s, n, REGOPT_REG_BREGMAN);
    s[i].size -= 4;
    {
        char name[25];
        memcpy(name, s[i].name, 24);
        name[24] = '\0';
        b = join(v.ck, s, n, FORMAT, &size);
        expect(&v, b, size, REGOPT_ERR_CORRUPT, name, "short teacher");
    }
    free(b);

    /* a "features" section missing */
    n = split(v.ck, s);
    i = find_section(s, n, "features");
    free(s[i].data);
    memmove(&s[i], &s[i + 1], (n - (size_t)i - 1) * sizeof s[0]);
    b = join(v.ck, s, n - 1, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "features", "no features");
    free(b);

    /* a trainer section too short */
    n = split(v.ck, s);
    i = find_section(s, n, "trainer");
    s[i].size = 40;
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "trainer", "short trainer");
    free(b);

    /* bytes after the last section, and a wrong magic */
    b = malloc(v.n + 1);
    memcpy(b, v.ck, v.n);
    b[v.n] = 0;
    wr64(b + 16, v.n + 1);
    wr32(b + 28, crc32_ref(b + 32, 48 * rd32(b + 12), crc32_ref(b, 28, 0)));
    expect(&v, b, v.n + 1, REGOPT_ERR_CORRUPT, "after its last section", "trailing byte");
    memcpy(b, v.ck, v.n);
    b[0] = 'X';
    expect(&v, b, v.n, REGOPT_ERR_CORRUPT, "magic", "magic");
    free(b);
    victim_free(&v);
}
END_TEST

/* Values behind valid CRCs are checked too: a forged step count, NaN
 * moments or teacher weights, negative second moments, bad flags. */
static void forge_float(section *s, size_t n, const char *name, size_t idx, float v)
{
    int i = find_section(s, n, name);
    uint32_t bits;
    memcpy(&bits, &v, 4);
    wr32(s[i].data + 4 * idx, bits);
}

START_TEST(forged_values)
{
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b;
    int i;
    victim_make(&v, ALL);

    n = split(v.ck, s);
    i = find_section(s, n, "trainer");
    wr64(s[i].data, ((uint64_t)1 << 53) + 1);
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "step count", "step 2^53+1");
    free(b);

    n = split(v.ck, s);
    i = find_section(s, n, "trainer");
    wr32(s[i].data + 24, 2); /* momentum primed = 2 */
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "flag", "momentum flag 2");
    free(b);

    n = split(v.ck, s);
    forge_float(s, n, "moments", 3, NAN); /* a first moment */
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "non-finite", "NaN moment");
    free(b);

    n = split(v.ck, s);
    forge_float(s, n, "moments", CD * CK + CK + 1, -1e-3f); /* v of the second block */
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "negative second moment", "negative v");
    free(b);

    n = split(v.ck, s);
    forge_float(s, n, "moments", 1, -1e-3f); /* a negative first moment is fine */
    b = join(v.ck, s, n, FORMAT, &size);
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, ALL, b, size), REGOPT_OK);
    free(b);
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, v.before, v.nbefore));

    /* the teacher's first weight, after Bregman's holds | pad | beta */
    n = split(v.ck, s);
    i = find_reg(s, n, REGOPT_REG_BREGMAN);
    {
        float inf = INFINITY;
        uint32_t bits;
        memcpy(&bits, &inf, 4);
        ck_assert_uint_eq(rd32(reg_state(&s[i])), 1); /* it holds weights */
        wr32(reg_state(&s[i]) + 16, bits);
    }
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "teacher", "inf teacher");
    free(b);

    /* Bregman's "holds weights" flag 2 */
    n = split(v.ck, s);
    i = find_reg(s, n, REGOPT_REG_BREGMAN);
    wr32(reg_state(&s[i]), 2);
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, NULL, "teacher flag 2");
    free(b);

    /* the model section claims "b" is frozen: another layout */
    n = split(v.ck, s);
    i = find_section(s, n, "model");
    wr32(s[i].data + 8 + 24 + 1 + 16, 0); /* tensor 1 ("b"), after "W" (name 1 byte) */
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_MISMATCH, "frozen", "b frozen");
    free(b);

    /* an option key from a newer library is skipped */
    n = split(v.ck, s);
    i = find_section(s, n, "options");
    wr32(s[i].data + 8, 9999); /* the first entry's key */
    b = join(v.ck, s, n, FORMAT, &size);
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, b, size));
    free(b);
    victim_free(&v);
}
END_TEST

void checkpoint_damage_tests(TCase *tc)
{
    tcase_add_test(tc, every_truncation);
    tcase_add_test(tc, every_bit_flip);
    tcase_add_test(tc, random_damage);
    tcase_add_test(tc, rebuilt_checkpoint_loads);
    tcase_add_test(tc, unknown_section_skipped);
    tcase_add_test(tc, forged_sections);
    tcase_add_test(tc, forged_values);
}
