/* replay_main.c — a plain main for any harness: runs LLVMFuzzerTestOneInput
 * on every file named (directories: every file in them, in name order), so
 * CI replays the committed corpus with gcc and no libFuzzer. A crash or a
 * failed invariant aborts, as it would under the fuzzer.
 *
 *   replay_options fuzz/corpus/options [more files or directories]
 *
 * A directory that does not exist replays nothing, with a note: a new
 * harness can land before its seed corpus does. */
#define _POSIX_C_SOURCE 200809L /* dirent, stat */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>

static size_t replayed;

static int replay_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    if (!fp) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return 1;
    }
    for (;;) {
        size_t got;
        if (n == cap) {
            uint8_t *more = realloc(buf, cap ? 2 * cap : 4096);
            if (!more) {
                free(buf);
                fclose(fp);
                fprintf(stderr, "replay: %s: out of memory\n", path);
                return 1;
            }
            buf = more;
            cap = cap ? 2 * cap : 4096;
        }
        got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0)
            break;
    }
    fclose(fp);
    /* an exact-size copy, so ASan sees reads past the input's end */
    {
        uint8_t *exact = malloc(n ? n : 1);
        if (!exact) {
            free(buf);
            return 1;
        }
        if (n)
            memcpy(exact, buf, n);
        free(buf);
        LLVMFuzzerTestOneInput(exact, n);
        free(exact);
    }
    replayed++;
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int replay_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0, i;
    int rc = 0;
    if (!d) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            char **more = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *names);
            if (!more) {
                rc = 1;
                break;
            }
            names = more;
        }
        names[n] = malloc(strlen(dir) + strlen(e->d_name) + 2);
        if (!names[n]) {
            rc = 1;
            break;
        }
        sprintf(names[n], "%s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, by_name);
    for (i = 0; i < n; i++) {
        if (!rc)
            rc = replay_file(names[i]);
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    int i;
    /* the empty input too: every harness must cope with it */
    LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
    for (i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) {
            printf("replay: %s: no such corpus yet, skipped\n", argv[i]);
            continue;
        }
        if ((S_ISDIR(sb.st_mode) ? replay_dir(argv[i]) : replay_file(argv[i])) != 0)
            return 1;
    }
    printf("replay: %s: %zu inputs, no failure\n", argc > 1 ? argv[1] : "(none)", replayed);
    return 0;
}
