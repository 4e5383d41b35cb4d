/* One list of error codes for all of paytask, in the style of libuv's
 * UV_ERRNO_MAP: each code has a name and a message. Functions return 0 or
 * one of these negative codes; where a detailed message matters, a
 * pt_error_t is the last parameter (it may be NULL). */
#ifndef PT_ERROR_H
#define PT_ERROR_H

#include <stddef.h>

#define PT_ERRNO_MAP(XX)                                                     \
  XX(EINVAL, -1, "invalid argument")                                         \
  XX(ENOMEM, -2, "out of memory")                                            \
  XX(ECONNECT, -3, "could not connect")                                      \
  XX(EPROTO, -4, "protocol error")                                           \
  XX(ETIMEDOUT, -5, "timed out")                                             \
  XX(ECLOSED, -6, "connection closed")                                       \
  XX(ENOTFOUND, -7, "not found")                                             \
  XX(ECONFLICT, -8, "conflict")                                              \
  XX(EIO, -9, "input/output error")                                          \
  XX(EBROKER, -10, "message broker error")                                   \
  XX(EREDIS, -11, "redis error")                                             \
  XX(EMONGO, -12, "mongodb error")                                           \
  XX(ECONFIG, -13, "configuration error")                                    \
  XX(ECANCELED, -14, "operation canceled")                                   \
  XX(ENACK, -15, "broker refused the message")                               \
  XX(EBUSY, -16, "resource busy")                                            \
  XX(EHTTP, -17, "http error")                                               \
  XX(ECRYPTO, -18, "cryptographic failure")                                  \
  XX(ECLOCK, -19, "clock moved backwards")                                   \
  XX(EUNROUTED, -20, "the broker routed the message to no queue")          \
  XX(EREFUSED, -21, "refused to connect to that address")

typedef enum {
  PT_OK = 0,
#define PT_ERRNO_ENUM(name, value, msg) PT_##name = (value),
  PT_ERRNO_MAP(PT_ERRNO_ENUM)
#undef PT_ERRNO_ENUM
} pt_errno_t;

/* Error domains say which library a code came from. */
typedef enum {
  PT_DOMAIN_PAYTASK = 0,
  PT_DOMAIN_AMQP,
  PT_DOMAIN_REDIS,
  PT_DOMAIN_MONGO,
  PT_DOMAIN_HTTP,
  PT_DOMAIN_CONFIG,
  PT_DOMAIN_SYSTEM
} pt_error_domain_t;

typedef struct {
  int domain;
  int code;
  char message[256];
} pt_error_t;

/* Name ("PT_EINVAL") and message ("invalid argument") of a code; never NULL. */
const char *pt_err_name(int code);
const char *pt_strerror(int code);

/* Fills *err (if not NULL) and returns code, so a caller may write
 * `return pt_error_set(err, PT_DOMAIN_AMQP, PT_ECONNECT, "…%s", x);`. */
int pt_error_set(pt_error_t *err, int domain, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Copies s into dst (size > 0 bytes), cut at a UTF-8 character boundary so
 * that a long message never ends in half a character (it goes into JSON
 * later, and libbson writes no string that is not UTF-8). dst MAY be s:
 * the string is then cut in place. */
void pt_utf8_copy(char *dst, size_t size, const char *s);

#endif
