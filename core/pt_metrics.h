/* Metrics in the Prometheus text format (version 0.0.4). A registry holds
 * counters, gauges and histograms, each a family of series told apart by a
 * fixed, short label string such as `type="pay",channel="sim"`. It is owned
 * by one loop thread and not thread-safe. */
#ifndef PT_METRICS_H
#define PT_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct pt_metrics pt_metrics_t;

pt_metrics_t *pt_metrics_new(void);
void pt_metrics_destroy(pt_metrics_t *m);

/* Adds v to the counter `name{labels}` (labels MAY be NULL or ""). help is
 * recorded the first time a family is seen. */
void pt_metrics_inc(pt_metrics_t *m, const char *name, const char *help,
                    const char *labels, double v);
/* Sets a gauge. */
void pt_metrics_set(pt_metrics_t *m, const char *name, const char *help,
                    const char *labels, double v);
/* Observes a value (seconds) in a histogram with fixed buckets from 1 ms
 * to 60 s. */
void pt_metrics_observe(pt_metrics_t *m, const char *name, const char *help,
                        const char *labels, double seconds);

/* The whole registry as text (free() the result). */
char *pt_metrics_render(const pt_metrics_t *m, size_t *len);

/* Escapes a label value (\, " and newline) into out. */
void pt_metrics_label(char *out, size_t len, const char *value);

#endif
