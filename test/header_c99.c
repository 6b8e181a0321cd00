/* header_c99.c — the public header compiles alone as strict C99 (built with
 * -std=c99 -pedantic-errors -Werror) and its macros are usable. */
#include <regopt.h>

#include <stdio.h>

int main(void)
{
    regopt_batch b;
    regopt_pass p;
    regopt_allocator a = {sizeof(regopt_allocator), 0, 0, 0};
    regopt_batch_init(&b);
    (void)p;
    (void)a;
    if (regopt_version_number() != REGOPT_VERSION_NUMBER) {
        fprintf(stderr, "header %s, library %s\n", REGOPT_VERSION_STRING,
                regopt_version_string());
        return 1;
    }
    printf("header_c99: ok (%s)\n", REGOPT_VERSION_STRING);
    return b.size == sizeof b ? 0 : 1;
}
