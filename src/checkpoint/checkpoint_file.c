/* checkpoint_file.c — checkpoints on disk. Saving is atomic: the bytes go to
 * a temporary file in the target's directory (so that rename stays within
 * one file system), which is flushed and fsync'ed before it is renamed over
 * the target; the directory is fsync'ed last so the rename itself is
 * durable. Whatever fails, the old file under the target name is intact. */
#define _XOPEN_SOURCE 700 /* realpath, lstat, fchmod: POSIX.1-2008 with XSI */
#include "checkpoint/checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct fd_out {
    int fd;
    int err; /* errno of the failed write */
} fd_out;

static int fd_write(const void *data, size_t n, void *user)
{
    fd_out *o = user;
    const char *p = data;
    while (n) {
        ssize_t k = write(o->fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            o->err = k < 0 ? errno : ENOSPC;
            return 1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static const char *why(int err, char *buf, size_t cap)
{
    if (strerror_r(err, buf, cap) != 0)
        snprintf(buf, cap, "error %d", err);
    return buf;
}

/* fsync the directory holding the file tmp names (tmp is cut to the
 * directory's name), so that the rename survives a crash.
 * Failure is not reported: the file under path is complete either way. */
static void sync_dir(char *tmp)
{
    char *slash = strrchr(tmp, '/');
    int fd;
    if (slash == tmp)
        slash[1] = 0; /* "/name": the root */
    else if (slash)
        *slash = 0;
    fd = open(slash ? tmp : ".", O_RDONLY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/* Create the temporary file next to `target` with O_EXCL, mode 0666 so that
 * the umask applies as for any new file; a replaced checkpoint's permission
 * bits carry over. On success tmp holds its name and *fd the descriptor. */
static regopt_status create_temp(const regopt_trainer *t, const char *target, char *tmp,
                                 size_t cap, int *fd)
{
    char e[128];
    struct stat old;
    unsigned attempt;
    *fd = -1;
    for (attempt = 0; attempt < 1000 && *fd < 0; attempt++) {
        snprintf(tmp, cap, "%s.tmp.%ld.%u", target, (long)getpid(), attempt);
        *fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (*fd < 0 && errno != EEXIST)
            break;
    }
    if (*fd < 0)
        return ro_fail((char *)t->msg, REGOPT_ERR_IO, "cannot create a temporary file next "
                       "to %s: %s", target, why(errno, e, sizeof e));
    if (stat(target, &old) == 0 && fchmod(*fd, old.st_mode & 0777) != 0)
        return ro_fail((char *)t->msg, REGOPT_ERR_IO, "cannot give %s the permissions of %s: %s",
                       tmp, target, why(errno, e, sizeof e));
    return REGOPT_OK;
}

static regopt_status write_temp(const regopt_trainer *t, uint32_t flags, int fd,
                                const char *tmp)
{
    char e[128];
    fd_out o;
    uint64_t total;
    regopt_status st;
    o.fd = fd;
    o.err = 0;
    st = ro_ck_save(t, flags, fd_write, &o, &total);
    if (st != REGOPT_OK && o.err)
        st = ro_fail((char *)t->msg, REGOPT_ERR_IO, "writing %s: %s", tmp,
                     why(o.err, e, sizeof e));
    if (st == REGOPT_OK && fsync(fd) != 0)
        st = ro_fail((char *)t->msg, REGOPT_ERR_IO, "fsync of %s: %s", tmp,
                     why(errno, e, sizeof e));
    return st;
}

/* Where the bytes go: path itself, or, when path is a symbolic link, the
 * file it names (as a plain fopen-and-write would), so that renaming never
 * replaces the link. NULL with errno set when a link cannot be resolved.
 * buf (PATH_MAX bytes) keeps libc from allocating behind the hooks. */
static const char *save_target(const char *path, char *buf)
{
    struct stat sb;
    if (lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode))
        return realpath(path, buf);
    return path;
}

static regopt_status save_file_run(const regopt_trainer *t, uint32_t flags,
                                       const char *path)
{
    char e[128], resolved[PATH_MAX], *tmp = NULL;
    const char *target;
    size_t cap;
    int fd = -1;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_save_file");
    if (st == REGOPT_OK && !path)
        st = ro_fail((char *)t->msg, REGOPT_ERR_NULL_POINTER,
                     "regopt_trainer_save_file: path is NULL");
    if (st == REGOPT_OK && flags & ~(uint32_t)(REGOPT_CHECKPOINT_PARAMS |
                                               REGOPT_CHECKPOINT_OPTIONS))
        st = ro_fail((char *)t->msg, REGOPT_ERR_INVALID_ARGUMENT,
                     "regopt_trainer_save_file: unknown flags 0x%" PRIx32, flags);
    if (st == REGOPT_OK)
        st = ro_trainer_swapped_check((regopt_trainer *)t, "regopt_trainer_save_file");
    if (st != REGOPT_OK)
        return st;
    target = save_target(path, resolved);
    if (!target)
        return ro_fail((char *)t->msg, REGOPT_ERR_IO, "cannot resolve the link %s: %s", path,
                       why(errno, e, sizeof e));
    cap = strlen(target) + 32;
    tmp = ro_malloc(&t->alloc, cap);
    if (!tmp)
        st = ro_fail((char *)t->msg, REGOPT_ERR_NO_MEMORY, "out of memory for a file name");
    if (st == REGOPT_OK)
        st = create_temp(t, target, tmp, cap, &fd);
    if (st == REGOPT_OK)
        st = write_temp(t, flags, fd, tmp);
    if (fd >= 0 && close(fd) != 0 && st == REGOPT_OK)
        st = ro_fail((char *)t->msg, REGOPT_ERR_IO, "closing %s: %s", tmp,
                     why(errno, e, sizeof e));
    if (st == REGOPT_OK && rename(tmp, target) != 0)
        st = ro_fail((char *)t->msg, REGOPT_ERR_IO, "renaming %s to %s: %s", tmp, target,
                     why(errno, e, sizeof e));
    if (st != REGOPT_OK && fd >= 0)
        (void)unlink(tmp); /* ours (O_EXCL): the target keeps its old content */
    else if (st == REGOPT_OK)
        sync_dir(tmp);
    ro_free(&t->alloc, tmp);
    return st;
}

static regopt_status read_all(regopt_trainer *t, int fd, const char *path, unsigned char *buf,
                              size_t n)
{
    char e[128];
    while (n) {
        ssize_t k = read(fd, buf, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return ro_fail(t->msg, REGOPT_ERR_IO, "reading %s: %s", path,
                           why(errno, e, sizeof e));
        if (k == 0)
            return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "%s ended early (truncated)", path);
        buf += k;
        n -= (size_t)k;
    }
    return REGOPT_OK;
}

static regopt_status load_file_run(regopt_trainer *t, uint32_t flags, const char *path)
{
    char e[128];
    struct stat sb;
    unsigned char *buf;
    int fd;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_load_file");
    if (st == REGOPT_OK && !path)
        st = ro_fail(t->msg, REGOPT_ERR_NULL_POINTER, "regopt_trainer_load_file: path is NULL");
    if (st == REGOPT_OK && flags & ~(uint32_t)(REGOPT_CHECKPOINT_PARAMS |
                                               REGOPT_CHECKPOINT_OPTIONS))
        st = ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT,
                     "regopt_trainer_load_file: unknown flags 0x%" PRIx32, flags);
    if (st == REGOPT_OK)
        st = ro_trainer_swapped_check(t, "regopt_trainer_load_file");
    if (st != REGOPT_OK)
        return st;
    /* O_NONBLOCK: a FIFO under this name must not hang us before the
       regular-file check */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return ro_fail(t->msg, REGOPT_ERR_IO, "cannot open %s: %s", path,
                       why(errno, e, sizeof e));
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ro_fail(t->msg, REGOPT_ERR_IO, "%s is not a readable regular file", path);
    }
    if ((uint64_t)sb.st_size > ro_ck_limit(t)) {
        close(fd);
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "%s has %" PRIu64 " bytes, far more than "
                       "this trainer's state: refused as damaged", path, (uint64_t)sb.st_size);
    }
    buf = ro_malloc(&t->alloc, sb.st_size ? (size_t)sb.st_size : 1);
    if (!buf) {
        close(fd);
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY, "out of memory for %s", path);
    }
    st = read_all(t, fd, path, buf, (size_t)sb.st_size);
    close(fd);
    ro_trainer_push_undo(t, ro_ck_free_buffer, buf); /* a term's load_state may throw */
    if (st == REGOPT_OK)
        st = ro_ck_load_memory(t, flags, buf, (size_t)sb.st_size);
    ro_trainer_pop_undo(t);
    ro_free(&t->alloc, buf);
    return st;
}

/* The public calls: the guard (guard.c) around the work above. The save
 * calls change nothing, but run host callbacks (write, a term's state). */

regopt_status regopt_trainer_save_file(const regopt_trainer *t, uint32_t flags, const char *path)
{
    RO_GUARDED((regopt_trainer *)t, "regopt_trainer_save_file", save_file_run(t, flags, path));
}

regopt_status regopt_trainer_load_file(regopt_trainer *t, uint32_t flags, const char *path)
{
    RO_GUARDED(t, "regopt_trainer_load_file", load_file_run(t, flags, path));
}
