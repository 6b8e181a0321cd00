/* status.c — versions, status names and failure messages. */
#include "core/core.h"

#include <stdio.h>

/* The only per-thread state: the detail of a failure that had no handle to
 * be recorded in (a constructor returning NULL, a NULL handle). */
static _Thread_local char tls_message[RO_MSG_SIZE];

unsigned regopt_version_number(void) { return REGOPT_VERSION_NUMBER; }

const char *regopt_version_string(void) { return REGOPT_VERSION_STRING; }

const char *regopt_status_string(regopt_status status)
{
    switch (status) {
    case REGOPT_OK: return "REGOPT_OK: success";
    case REGOPT_ERR_NULL_POINTER: return "REGOPT_ERR_NULL_POINTER: a required pointer is NULL";
    case REGOPT_ERR_INVALID_ARGUMENT: return "REGOPT_ERR_INVALID_ARGUMENT: invalid argument";
    case REGOPT_ERR_OUT_OF_RANGE: return "REGOPT_ERR_OUT_OF_RANGE: value out of range";
    case REGOPT_ERR_UNKNOWN_KEY: return "REGOPT_ERR_UNKNOWN_KEY: unknown key for this handle";
    case REGOPT_ERR_UNSUPPORTED: return "REGOPT_ERR_UNSUPPORTED: not supported by this build";
    case REGOPT_ERR_NO_MEMORY: return "REGOPT_ERR_NO_MEMORY: allocation failed";
    case REGOPT_ERR_STATE: return "REGOPT_ERR_STATE: not allowed in the current state";
    case REGOPT_ERR_FORWARD: return "REGOPT_ERR_FORWARD: the forward callback failed";
    case REGOPT_ERR_BACKWARD: return "REGOPT_ERR_BACKWARD: the backward callback failed";
    case REGOPT_ERR_LOSS_CALLBACK: return "REGOPT_ERR_LOSS_CALLBACK: the loss callback failed";
    case REGOPT_ERR_NONFINITE_LOSS: return "REGOPT_ERR_NONFINITE_LOSS: the loss is NaN or infinite";
    case REGOPT_ERR_NONFINITE_GRADIENT: return "REGOPT_ERR_NONFINITE_GRADIENT: a gradient is NaN or infinite";
    case REGOPT_ERR_ALLREDUCE: return "REGOPT_ERR_ALLREDUCE: the all-reduce failed, here or on another replica";
    case REGOPT_ERR_CORRUPT: return "REGOPT_ERR_CORRUPT: the checkpoint is damaged";
    case REGOPT_ERR_MISMATCH: return "REGOPT_ERR_MISMATCH: the checkpoint does not fit this trainer";
    case REGOPT_ERR_IO: return "REGOPT_ERR_IO: a file or checkpoint callback operation failed";
    case REGOPT_ERR_HOST_UPDATE:
        return "REGOPT_ERR_HOST_UPDATE: the host's update callback failed";
    case REGOPT_ERR_OVERFLOW: return "REGOPT_ERR_OVERFLOW: a loss-scaled gradient overflowed";
    case REGOPT_ERR_BACKEND: return "REGOPT_ERR_BACKEND: the model's backend failed an operation";
    }
    return "unknown status";
}

const char *regopt_last_error_message(void) { return tls_message; }

static void format_into(char *buf, const char *fmt, va_list ap)
{
    int n = vsnprintf(buf, RO_MSG_SIZE, fmt, ap);
    if (n < 0)
        buf[0] = '\0';
}

regopt_status ro_fail(char *buf, regopt_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    format_into(buf, fmt, ap);
    va_end(ap);
    return st;
}

regopt_status ro_fail_tls(regopt_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    format_into(tls_message, fmt, ap);
    va_end(ap);
    return st;
}
