/* Keeps the support library non-empty. */
typedef int pt_testsupport_empty_t;
