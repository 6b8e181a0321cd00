/* checkpoint.h — what a checkpoint holds (checkpoint.c) and how it is
 * written and read (checkpoint_format.c, checkpoint_file.c). Above the
 * trainer: it reads the trainer's state and the attached regularizers'
 * through their ops. */
#ifndef REGOPT_CHECKPOINT_H
#define REGOPT_CHECKPOINT_H

#include "trainer/trainer.h"

#define RO_CK_MAX_SECTIONS (8 + RO_MAX_REGS) /* written by this version */
#define RO_CK_MAX_FOUND 64    /* remembered when reading */

/* A section found in a checkpoint being loaded (CRC already checked). */
typedef struct ro_ck_found {
    char name[25];
    const unsigned char *data;
    uint64_t size;
} ro_ck_found;

#define RO_CK_HEADER 32u
#define RO_CK_VERSION 2u

/* A section of the trainer's checkpoint: its name and what writes it
 * (arg: which regularizer, for "reg.N"). */
typedef struct ro_ck_section {
    char name[24];
    void (*emit)(const regopt_trainer *t, size_t arg, ro_ck_sink *s);
    size_t arg;
} ro_ck_section;

/* The sections a save with these flags writes, in order; returns how many. */
size_t ro_ck_sections(const regopt_trainer *t, uint32_t flags, ro_ck_section *out);
/* Validate the found sections against the trainer, then apply them; on
 * failure nothing has changed. */
regopt_status ro_ck_restore(regopt_trainer *t, uint32_t flags, const ro_ck_found *found,
                            size_t count);
/* checkpoint_tensors.c: the "moments" and "params" sections' writers
 * (through the backend's REGOPT_VOP_READ when the model has one); and, on
 * load, both applied (moments, then params when not NULL; with a backend
 * through REGOPT_VOP_WRITE, which may fail: REGOPT_ERR_BACKEND, what was
 * written stays) with the guard's bound of the first moments. */
void ro_ck_emit_moments(const regopt_trainer *t, size_t arg, ro_ck_sink *s);
void ro_ck_emit_params(const regopt_trainer *t, size_t arg, ro_ck_sink *s);
regopt_status ro_ck_apply_tensors(regopt_trainer *t, const ro_ck_found *moments,
                                  const ro_ck_found *params);
/* checkpoint_options.c: the "options" section's writer; and, on load,
 * the options applied, then every attached regularizer's state (at[i],
 * size[i] of regularizer i, already checked), all rolled back when any is
 * refused. f NULL: no options, the state only. */
typedef struct ro_ck_states {
    const unsigned char *at[RO_MAX_REGS];
    uint64_t size[RO_MAX_REGS];
} ro_ck_states;
void ro_ck_emit_options(const regopt_trainer *t, size_t arg, ro_ck_sink *s);
regopt_status ro_ck_apply_options(regopt_trainer *t, const ro_ck_found *f,
                                  const ro_ck_states *rs);

/* Save / load through callbacks, shared by the buffer, callback and file
 * entry points. */
regopt_status ro_ck_save(const regopt_trainer *t, uint32_t flags, regopt_write_fn write,
                         void *user, uint64_t *total);
/* An undo of the guard (trainer/guard.c): free a load's buffer. */
void ro_ck_free_buffer(regopt_trainer *t, void *buf);
regopt_status ro_ck_load_memory(regopt_trainer *t, uint32_t flags, const unsigned char *buf,
                                size_t size);
/* Total size announced by a 32-byte header after checking magic, version
 * and header CRC; and the largest checkpoint this trainer accepts. */
regopt_status ro_ck_header(regopt_trainer *t, const unsigned char *h, uint64_t *total);
uint64_t ro_ck_limit(const regopt_trainer *t);

#endif
