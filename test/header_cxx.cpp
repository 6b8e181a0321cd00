// header_cxx.cpp — the public header compiles as C++ (extern "C", no C-only
// constructs) and links against the C library.
#include <regopt.h>

#include <cstdio>

int main()
{
    regopt_status st = REGOPT_OK;
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_ADAMW, nullptr, &st);
    double wd = 0.0;
    if (!o || regopt_optimizer_get_double(o, REGOPT_OPT_WEIGHT_DECAY, &wd) != REGOPT_OK ||
        wd != 1e-2) {
        std::fprintf(stderr, "header_cxx: %s\n", regopt_last_error_message());
        return 1;
    }
    regopt_optimizer_free(o);
    std::printf("header_cxx: ok (%s)\n", regopt_version_string());
    return 0;
}
