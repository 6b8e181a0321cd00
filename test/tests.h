/* tests.h — the Check suites of libregopt, one per source concept. */
#ifndef REGOPT_TESTS_H
#define REGOPT_TESTS_H

#include <check.h>
#include <regopt.h>

Suite *suite_status(void);  /* check_status.c: versions, status codes, keys */
Suite *suite_status_regularizer(void); /* check_status_regularizer.c: handles, bad inputs */
Suite *suite_rng(void);     /* check_rng.c: Philox known answers, uniform, normal */
Suite *suite_model(void);   /* check_model.c: registration and its bad inputs */
Suite *suite_loss(void);    /* check_loss.c: losses, finite differences */
Suite *suite_optim(void);   /* check_optim*.c: optimizers and schedules vs formulas */
Suite *suite_optim_host(void); /* check_optim_host.c: REGOPT_HOST, the host's own update */
Suite *suite_trainer(void); /* check_trainer*.c: steps, accumulation, rollback */
Suite *suite_parallel(void); /* check_parallel.c: data-parallel all-reduce */
Suite *suite_sam(void);     /* check_sam.c: SAM, ASAM, GSAM, rho schedule vs formulas */
Suite *suite_sam_step(void); /* check_sam_step.c: restore, order, every-k, m-sharpness, memory */
Suite *suite_sam_rollback(void); /* check_sam_rollback.c: failed perturbed passes */
Suite *suite_sam_options(void); /* check_sam_options.c: bounds, defaults, keys, attach */
Suite *suite_rdrop(void);   /* check_rdrop.c: R-Drop reference, finite differences, mask */
Suite *suite_rdrop_passes(void); /* check_rdrop_passes.c: call order, seeds, doubled batch, SAM */
Suite *suite_rdrop_errors(void); /* check_rdrop_errors.c: options, rollback, allocation */
Suite *suite_sam(void);
Suite *suite_sam_variants(void); /* check_sam_variants.c: FriendlySAM, VaSSO */
Suite *suite_rdrop(void);

Suite *suite_checkpoint(void); /* check_checkpoint*.c: save, resume, damage */
Suite *suite_smart(void);   /* check_smart.c: SMART inner loop, reference vector */
Suite *suite_smart_passes(void); /* check_smart_passes.c: gradients, passes */
Suite *suite_smart_teacher(void); /* check_smart_teacher.c: the Bregman EMA teacher */
Suite *suite_smart_options(void); /* check_smart_options.c: statistics, options */
Suite *suite_smart_sam(void); /* check_smart_sam.c: with SAM, rollback */
Suite *suite_smart_memory(void); /* check_smart_memory.c: allocation, sizes */
Suite *suite_threads(void); /* check_threads.c: independent trainers in threads */
Suite *suite_pool(void);    /* check_pool*.c: trainer.threads, the worker pool */
Suite *suite_guard(void);   /* check_guard.c: re-entrant and abandoned calls, fork */
Suite *suite_term(void);    /* check_term.c: user-defined terms vs R-Drop, rollback, state */
Suite *suite_term_inputs(void); /* check_term_inputs.c: create_term and term.weight bad inputs */
Suite *suite_contract(void); /* check_contract.c: trainer.check_host, the host contract */
Suite *suite_term_teacher(void); /* check_term_teacher.c: a user term reading the EMA teacher */
Suite *suite_flatness(void); /* check_flatness.c: regopt_trainer_flatness */
Suite *suite_average(void); /* check_average.c: EMA, SWA, swap, recalibration, state */
Suite *suite_backend(void);       /* check_backend.c: parameter memory behind a backend, PROT_NONE */
Suite *suite_backend_sam(void);   /* check_backend_sam.c: SAM's stateful variants through it */
Suite *suite_backend_checkpoint(void); /* check_backend_checkpoint.c: checkpoints through a backend */
Suite *suite_average_share(void); /* check_average_share.c: one buffer for a teacher and an EMA */
Suite *suite_mesa(void);    /* check_mesa.c: the Bregman term's KL(teacher||student), window */
Suite *suite_adv(void);      /* check_adv.c: FGM, PGD, FreeLB, VAT, mt-dnn-exact SMART */
Suite *suite_adv_errors(void); /* check_adv_errors.c: bad inputs, rollback, composition */
Suite *suite_adv_mask(void); /* check_adv_mask.c: regopt_batch.task_mask, semi-supervised VAT */
Suite *suite_precision(void); /* check_precision.c: fp16/bf16, master copy, loss scaling */
Suite *suite_pass_weights(void); /* check_pass_weights.c: REGOPT_CAP_PASS_WEIGHTS teacher passes */
Suite *suite_memory(void);   /* check_memory.c: bytes per parameter as README documents them */
Suite *suite_precision_compose(void); /* check_precision_compose.c: with every method, replicas */

#endif
