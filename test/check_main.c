/* check_main.c — the one runner of every Check suite. */
#include "tests.h"

#include <stdlib.h>

int main(void)
{
    SRunner *sr = srunner_create(suite_status());
    int failed;
    srunner_add_suite(sr, suite_status_regularizer());
    srunner_add_suite(sr, suite_rng());
    srunner_add_suite(sr, suite_model());
    srunner_add_suite(sr, suite_loss());
    srunner_add_suite(sr, suite_optim());
    srunner_add_suite(sr, suite_optim_host());
    srunner_add_suite(sr, suite_trainer());
    srunner_add_suite(sr, suite_parallel());
    srunner_add_suite(sr, suite_sam());
    srunner_add_suite(sr, suite_sam_step());
    srunner_add_suite(sr, suite_sam_rollback());
    srunner_add_suite(sr, suite_sam_options());
    srunner_add_suite(sr, suite_sam_variants());
    srunner_add_suite(sr, suite_rdrop());
    srunner_add_suite(sr, suite_rdrop_passes());
    srunner_add_suite(sr, suite_rdrop_errors());
    srunner_add_suite(sr, suite_smart());
    srunner_add_suite(sr, suite_smart_passes());
    srunner_add_suite(sr, suite_smart_teacher());
    srunner_add_suite(sr, suite_smart_options());
    srunner_add_suite(sr, suite_smart_sam());
    srunner_add_suite(sr, suite_smart_memory());
    srunner_add_suite(sr, suite_threads());
    srunner_add_suite(sr, suite_pool());
    srunner_add_suite(sr, suite_guard());
    srunner_add_suite(sr, suite_checkpoint());
    srunner_add_suite(sr, suite_term());
    srunner_add_suite(sr, suite_term_inputs());
    srunner_add_suite(sr, suite_contract());
    srunner_add_suite(sr, suite_term_teacher());
    srunner_add_suite(sr, suite_flatness());
    srunner_add_suite(sr, suite_average());
    srunner_add_suite(sr, suite_average_share());
    srunner_add_suite(sr, suite_backend());
    srunner_add_suite(sr, suite_backend_sam());
    srunner_add_suite(sr, suite_backend_checkpoint());
    srunner_add_suite(sr, suite_mesa());
    srunner_add_suite(sr, suite_adv());
    srunner_add_suite(sr, suite_adv_errors());
    srunner_add_suite(sr, suite_adv_mask());
    srunner_add_suite(sr, suite_precision());
    srunner_add_suite(sr, suite_precision_compose());
    srunner_add_suite(sr, suite_memory());
    srunner_add_suite(sr, suite_pass_weights());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
