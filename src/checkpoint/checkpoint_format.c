/* checkpoint_format.c — the checkpoint container: header, section table,
 * CRC-32 per section (format in docs/checkpoint-format.md; the encoding is
 * core/bytes.c's), and the buffer and callback entry points. What goes into the
 * sections is checkpoint.c's business; files are checkpoint_file.c's. */
#include "checkpoint/checkpoint.h"

#include <inttypes.h>
#include <string.h>

#define CK_VERSION RO_CK_VERSION
#define CK_ENTRY 48u
#define CK_NAME 24u
#define CK_MAX_COUNT 4096u /* far beyond any writer: a sanity bound */
#define CK_CHUNK 16384u    /* write-callback chunk */

static const unsigned char ck_magic[8] = {'R', 'E', 'G', 'O', 'P', 'T', 'C', 'K'};

/* ---- save -------------------------------------------------------------- */

/* The header's CRC covers its first 28 bytes and the whole section table,
 * so that every byte of a checkpoint is under some CRC. */
static uint32_t header_crc(const unsigned char *h, const unsigned char *table, uint32_t count)
{
    return ro_crc32(ro_crc32(0, h, 28), table, (size_t)count * CK_ENTRY);
}

static void header_bytes(unsigned char *h, const unsigned char *table, uint32_t count,
                         uint64_t total, uint32_t flags)
{
    memcpy(h, ck_magic, 8);
    ro_ck_le32(h + 8, CK_VERSION);
    ro_ck_le32(h + 12, count);
    ro_ck_le64(h + 16, total);
    ro_ck_le32(h + 24, flags);
    ro_ck_le32(h + 28, header_crc(h, table, count));
}

/* Two passes over the sections: the first measures size and CRC (nothing
 * is written), the second writes header, table and payloads in order, so a
 * write callback never has to seek and no copy of the state is made.
 * Sections follow the table back to back, in table order. */
regopt_status ro_ck_save(const regopt_trainer *t, uint32_t flags, regopt_write_fn write,
                         void *user, uint64_t *total)
{
    ro_ck_section secs[RO_CK_MAX_SECTIONS];
    uint64_t off[RO_CK_MAX_SECTIONS], size[RO_CK_MAX_SECTIONS], end;
    uint32_t crc[RO_CK_MAX_SECTIONS];
    unsigned char buf[CK_CHUNK], h[RO_CK_HEADER], table[RO_CK_MAX_SECTIONS * CK_ENTRY];
    float scratch[RO_XFER_FLOATS]; /* what a backend's buffers are read into */
    size_t n = ro_ck_sections(t, flags, secs), i;
    ro_ck_sink s;
    regopt_status lost = REGOPT_OK;

    end = RO_CK_HEADER + (uint64_t)n * CK_ENTRY;
    for (i = 0; i < n; i++) {
        memset(&s, 0, sizeof s);
        s.crc_on = write != NULL; /* a size query needs no CRC */
        s.scratch = scratch;
        s.scratch_n = RO_XFER_FLOATS;
        if (lost == REGOPT_OK) /* after a failure: no more calls of the backend or host */
            secs[i].emit(t, secs[i].arg, &s);
        /* a user term's save_state or the backend failed: sizes and CRCs are wrong */
        if (s.lost && lost == REGOPT_OK)
            lost = s.lost_st ? s.lost_st : REGOPT_ERR_IO;
        off[i] = end;
        size[i] = s.size;
        crc[i] = s.crc;
        end = off[i] + size[i];
    }
    *total = end;
    if (lost != REGOPT_OK)
        return lost; /* the term or the backend call wrote the message */
    if (!write)
        return REGOPT_OK;

    memset(table, 0, sizeof table);
    for (i = 0; i < n; i++) {
        unsigned char *e = table + i * CK_ENTRY;
        memcpy(e, secs[i].name, strlen(secs[i].name)); /* < CK_NAME, NUL-padded */
        ro_ck_le64(e + 24, off[i]);
        ro_ck_le64(e + 32, size[i]);
        ro_ck_le32(e + 40, crc[i]);
    }
    header_bytes(h, table, (uint32_t)n, end, flags);
    memset(&s, 0, sizeof s);
    s.write = write;
    s.user = user;
    s.buf = buf;
    s.cap = sizeof buf;
    s.scratch = scratch;
    s.scratch_n = RO_XFER_FLOATS;
    ro_ck_put(&s, h, sizeof h);
    ro_ck_put(&s, table, n * CK_ENTRY);
    for (i = 0; i < n; i++)
        secs[i].emit(t, secs[i].arg, &s);
    ro_ck_flush(&s);
    if (s.lost) /* the second pass read something else: the bytes written are not a checkpoint */
        return s.lost_st ? s.lost_st : REGOPT_ERR_IO;
    if (s.failed)
        return ro_fail((char *)t->msg, REGOPT_ERR_IO,
                       "the checkpoint write callback failed (a %" PRIu64 "-byte checkpoint)",
                       end);
    return REGOPT_OK;
}

/* ---- load -------------------------------------------------------------- */

uint64_t ro_ck_limit(const regopt_trainer *t)
{
    uint64_t own = 0;
    (void)ro_ck_save(t, REGOPT_CHECKPOINT_PARAMS | REGOPT_CHECKPOINT_OPTIONS, NULL, NULL, &own);
    return 2 * own + (1u << 20);
}

regopt_status ro_ck_header(regopt_trainer *t, const unsigned char *h, uint64_t *total)
{
    uint32_t version = ro_ck_rd32(h + 8);
    if (memcmp(h, ck_magic, 8) != 0)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "not a libregopt checkpoint (the magic is not \"REGOPTCK\")");
    if (version == 0)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "checkpoint format version 0 is invalid");
    if (version == 1)
        return ro_fail(t->msg, REGOPT_ERR_UNSUPPORTED,
                       "the checkpoint was written by libregopt 0.x (format 1); libregopt %s "
                       "reads format %u: resume it with 0.x or restart training",
                       REGOPT_VERSION_STRING, CK_VERSION);
    if (version > CK_VERSION)
        return ro_fail(t->msg, REGOPT_ERR_UNSUPPORTED,
                       "checkpoint format version %" PRIu32
                       " is newer than this library reads (%u): update libregopt (or the "
                       "header is damaged)",
                       version, CK_VERSION);
    *total = ro_ck_rd64(h + 16);
    if (*total < RO_CK_HEADER)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "checkpoint size field %" PRIu64 " is below the header size", *total);
    return REGOPT_OK;
}

/* Read one table entry into f, checking bounds and CRC. */
static regopt_status table_entry(regopt_trainer *t, const unsigned char *buf, size_t size,
                                 uint64_t start, size_t i, ro_ck_found *f)
{
    const unsigned char *e = buf + RO_CK_HEADER + i * CK_ENTRY;
    uint64_t off = ro_ck_rd64(e + 24), len = ro_ck_rd64(e + 32);
    if (memchr(e, 0, CK_NAME) == NULL || e[0] == 0 || ro_ck_rd32(e + 44) != 0)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "checkpoint section %zu has a bad entry", i);
    memcpy(f->name, e, CK_NAME);
    f->name[CK_NAME] = 0;
    if (off != start || len > size - off)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "checkpoint section \"%s\" (%" PRIu64 " bytes at %" PRIu64
                       ") is not where it should be in the %zu-byte checkpoint",
                       f->name, len, off, size);
    f->data = buf + off;
    f->size = len;
    if (ro_crc32(0, f->data, (size_t)len) != ro_ck_rd32(e + 40))
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "checkpoint section \"%s\": CRC mismatch",
                       f->name);
    return REGOPT_OK;
}

regopt_status ro_ck_load_memory(regopt_trainer *t, uint32_t flags, const unsigned char *buf,
                                size_t size)
{
    ro_ck_found found[RO_CK_MAX_FOUND];
    uint64_t total = 0, end;
    uint32_t count;
    size_t i, j, kept = 0;
    regopt_status st;
    if (size < RO_CK_HEADER)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint is %zu bytes, shorter than its 32-byte header", size);
    /* magic and version first: a newer layout may not CRC the v1 way */
    st = ro_ck_header(t, buf, &total);
    if (st != REGOPT_OK)
        return st;
    count = ro_ck_rd32(buf + 12);
    if (count > CK_MAX_COUNT || RO_CK_HEADER + (uint64_t)count * CK_ENTRY > size)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's section table (%" PRIu32
                       " entries) does not fit in %zu bytes (truncated?)", count, size);
    if (header_crc(buf, buf + RO_CK_HEADER, count) != ro_ck_rd32(buf + 28))
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "checkpoint header CRC mismatch");
    if (total != size)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint says it has %" PRIu64 " bytes but %zu were given%s",
                       total, size, total > size ? " (truncated)" : "");
    end = RO_CK_HEADER + (uint64_t)count * CK_ENTRY;
    for (i = 0; i < count; i++) {
        ro_ck_found f;
        st = table_entry(t, buf, size, end, i, &f);
        if (st != REGOPT_OK)
            return st;
        end = (uint64_t)(f.data - buf) + f.size;
        for (j = 0; j < kept; j++)
            if (strcmp(found[j].name, f.name) == 0)
                return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                               "checkpoint section \"%s\" appears twice", f.name);
        if (kept < RO_CK_MAX_FOUND)
            found[kept++] = f;
        /* beyond that: a newer writer's extra sections, CRC-checked, skipped */
    }
    if (end != size)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint has %" PRIu64 " bytes after its last section",
                       (uint64_t)size - end);
    return ro_ck_restore(t, flags, found, kept);
}

/* ---- public entry points: buffer and callbacks ------------------------- */

static regopt_status flags_check(regopt_trainer *t, uint32_t flags, const char *func)
{
    if (flags & ~(uint32_t)(REGOPT_CHECKPOINT_PARAMS | REGOPT_CHECKPOINT_OPTIONS))
        return ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "%s: unknown flags 0x%" PRIx32, func, flags);
    /* swapped weights would be saved as the trained ones, or overwritten */
    return ro_trainer_swapped_check(t, func);
}

static regopt_status checkpoint_size_run(const regopt_trainer *t, uint32_t flags,
                                             size_t *size)
{
    uint64_t total = 0;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_checkpoint_size");
    if (st == REGOPT_OK)
        st = flags_check((regopt_trainer *)t, flags, "regopt_trainer_checkpoint_size");
    if (st == REGOPT_OK && !size)
        st = ro_fail((char *)t->msg, REGOPT_ERR_NULL_POINTER,
                     "regopt_trainer_checkpoint_size: size is NULL");
    if (st == REGOPT_OK)
        st = ro_ck_save(t, flags, NULL, NULL, &total);
    if (st == REGOPT_OK)
        *size = (size_t)total;
    return st;
}

/* The host's write callback, counted as a host call (guard.c). */
typedef struct host_out {
    regopt_trainer *t;
    regopt_write_fn write;
    void *user;
} host_out;

static int host_write(const void *data, size_t n, void *user)
{
    host_out *h = user;
    int rc;
    ro_host_enter(&h->t->env);
    rc = h->write(data, n, h->user);
    ro_host_leave(&h->t->env);
    return rc;
}

static regopt_status save_run(const regopt_trainer *t, uint32_t flags,
                                  regopt_write_fn write, void *user)
{
    uint64_t total;
    host_out h;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_save");
    if (st == REGOPT_OK)
        st = flags_check((regopt_trainer *)t, flags, "regopt_trainer_save");
    if (st == REGOPT_OK && !write)
        st = ro_fail((char *)t->msg, REGOPT_ERR_NULL_POINTER,
                     "regopt_trainer_save: the write callback is NULL");
    h.t = (regopt_trainer *)t;
    h.write = write;
    h.user = user;
    return st == REGOPT_OK ? ro_ck_save(t, flags, host_write, &h, &total) : st;
}

typedef struct mem_out {
    unsigned char *p;
    size_t cap, used;
} mem_out;

static int mem_write(const void *data, size_t n, void *user)
{
    mem_out *m = user;
    if (n > m->cap - m->used)
        return 1;
    memcpy(m->p + m->used, data, n);
    m->used += n;
    return 0;
}

static regopt_status save_buffer_run(const regopt_trainer *t, uint32_t flags,
                                         void *buffer, size_t capacity, size_t *written)
{
    uint64_t total = 0;
    mem_out m;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_save_buffer");
    if (st == REGOPT_OK)
        st = flags_check((regopt_trainer *)t, flags, "regopt_trainer_save_buffer");
    if (st != REGOPT_OK)
        return st;
    st = ro_ck_save(t, flags, NULL, NULL, &total);
    if (written)
        *written = (size_t)total;
    if (st != REGOPT_OK)
        return st;
    if (!buffer && capacity)
        return ro_fail((char *)t->msg, REGOPT_ERR_NULL_POINTER,
                       "regopt_trainer_save_buffer: buffer is NULL");
    if (capacity < total)
        return ro_fail((char *)t->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "regopt_trainer_save_buffer: the checkpoint needs %" PRIu64
                       " bytes, the buffer holds %zu",
                       total, capacity);
    m.p = buffer;
    m.cap = capacity;
    m.used = 0;
    return ro_ck_save(t, flags, mem_write, &m, &total);
}

static regopt_status load_buffer_run(regopt_trainer *t, uint32_t flags, const void *buffer,
                                         size_t size)
{
    regopt_status st = ro_trainer_check(t, "regopt_trainer_load_buffer");
    if (st == REGOPT_OK)
        st = flags_check(t, flags, "regopt_trainer_load_buffer");
    if (st == REGOPT_OK && !buffer)
        st = ro_fail(t->msg, REGOPT_ERR_NULL_POINTER,
                     "regopt_trainer_load_buffer: buffer is NULL");
    return st == REGOPT_OK ? ro_ck_load_memory(t, flags, buffer, size) : st;
}

/* The host's read callback, counted as a host call (guard.c). */
static int host_read(regopt_trainer *t, regopt_read_fn read, void *data, size_t n, void *user)
{
    int rc;
    ro_host_enter(&t->env);
    rc = read(data, n, user);
    ro_host_leave(&t->env);
    return rc;
}

void ro_ck_free_buffer(regopt_trainer *t, void *buf) { ro_free(&t->alloc, buf); }

static regopt_status load_run(regopt_trainer *t, uint32_t flags, regopt_read_fn read,
                                  void *user)
{
    unsigned char h[RO_CK_HEADER], *buf;
    uint64_t total = 0;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_load");
    if (st == REGOPT_OK)
        st = flags_check(t, flags, "regopt_trainer_load");
    if (st == REGOPT_OK && !read)
        st = ro_fail(t->msg, REGOPT_ERR_NULL_POINTER,
                     "regopt_trainer_load: the read callback is NULL");
    if (st != REGOPT_OK)
        return st;
    if (host_read(t, read, h, sizeof h, user) != 0)
        return ro_fail(t->msg, REGOPT_ERR_IO,
                       "the checkpoint read callback failed on the 32-byte header");
    st = ro_ck_header(t, h, &total);
    if (st != REGOPT_OK)
        return st;
    if (total > ro_ck_limit(t) || total > SIZE_MAX)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint claims %" PRIu64 " bytes, far more than this trainer's "
                       "state: refused as damaged", total);
    buf = ro_malloc(&t->alloc, (size_t)total);
    if (!buf)
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for a %" PRIu64 "-byte checkpoint", total);
    memcpy(buf, h, sizeof h);
    ro_trainer_push_undo(t, ro_ck_free_buffer, buf); /* if a callback never returns */
    if (total > sizeof h && host_read(t, read, buf + sizeof h, (size_t)total - sizeof h, user) != 0)
        st = ro_fail(t->msg, REGOPT_ERR_IO,
                     "the checkpoint read callback failed reading %" PRIu64 " bytes",
                     total - (uint64_t)sizeof h);
    else
        st = ro_ck_load_memory(t, flags, buf, (size_t)total);
    ro_trainer_pop_undo(t);
    ro_free(&t->alloc, buf);
    return st;
}

/* The public calls: the guard (guard.c) around the work above. The save
 * calls change nothing, but run host callbacks (write, a term's state). */

regopt_status regopt_trainer_checkpoint_size(const regopt_trainer *t, uint32_t flags, size_t *size)
{
    RO_GUARDED((regopt_trainer *)t, "regopt_trainer_checkpoint_size", checkpoint_size_run(t, flags, size));
}

regopt_status regopt_trainer_save(const regopt_trainer *t, uint32_t flags, regopt_write_fn write,
                                  void *user)
{
    RO_GUARDED((regopt_trainer *)t, "regopt_trainer_save", save_run(t, flags, write, user));
}

regopt_status regopt_trainer_save_buffer(const regopt_trainer *t, uint32_t flags, void *buffer,
                                         size_t capacity, size_t *written)
{
    RO_GUARDED((regopt_trainer *)t, "regopt_trainer_save_buffer", save_buffer_run(t, flags, buffer, capacity, written));
}

regopt_status regopt_trainer_load_buffer(regopt_trainer *t, uint32_t flags, const void *buffer,
                                         size_t size)
{
    RO_GUARDED(t, "regopt_trainer_load_buffer", load_buffer_run(t, flags, buffer, size));
}

regopt_status regopt_trainer_load(regopt_trainer *t, uint32_t flags, regopt_read_fn read, void *user)
{
    RO_GUARDED(t, "regopt_trainer_load", load_run(t, flags, read, user));
}
