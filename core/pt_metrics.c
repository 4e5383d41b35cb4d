#include "core/pt_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 12
static const double buckets[NBUCKETS] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,  0.5,   1,    2.5,   10,   60};

typedef enum { COUNTER, GAUGE, HISTOGRAM } kind_t;

typedef struct series {
  char labels[160];
  double value;               /* counter, gauge; histogram: sum */
  uint64_t count;             /* histogram */
  uint64_t bucket[NBUCKETS];  /* histogram, cumulative at render */
  struct series *next;
} series_t;

typedef struct family {
  char name[96];
  char help[160];
  kind_t kind;
  series_t *series;
  struct family *next;
} family_t;

struct pt_metrics {
  family_t *families, *last;
};

pt_metrics_t *pt_metrics_new(void) { return calloc(1, sizeof(pt_metrics_t)); }

void pt_metrics_destroy(pt_metrics_t *m) {
  if (m == NULL)
    return;
  for (family_t *f = m->families, *fn; f != NULL; f = fn) {
    fn = f->next;
    for (series_t *s = f->series, *sn; s != NULL; s = sn) {
      sn = s->next;
      free(s);
    }
    free(f);
  }
  free(m);
}

static series_t *find(pt_metrics_t *m, const char *name, const char *help,
                      kind_t kind, const char *labels) {
  family_t *f;
  if (labels == NULL)
    labels = "";
  for (f = m->families; f != NULL; f = f->next)
    if (strcmp(f->name, name) == 0)
      break;
  if (f == NULL) {
    f = calloc(1, sizeof *f);
    if (f == NULL)
      return NULL;
    snprintf(f->name, sizeof f->name, "%s", name);
    snprintf(f->help, sizeof f->help, "%s", help ? help : "");
    f->kind = kind;
    /* Families render in the order they first appear. */
    if (m->last)
      m->last->next = f;
    else
      m->families = f;
    m->last = f;
  }
  series_t *s;
  for (s = f->series; s != NULL; s = s->next)
    if (strcmp(s->labels, labels) == 0)
      return s;
  s = calloc(1, sizeof *s);
  if (s == NULL)
    return NULL;
  snprintf(s->labels, sizeof s->labels, "%s", labels);
  s->next = f->series;
  f->series = s;
  return s;
}

void pt_metrics_inc(pt_metrics_t *m, const char *name, const char *help,
                    const char *labels, double v) {
  series_t *s = find(m, name, help, COUNTER, labels);
  if (s)
    s->value += v;
}

void pt_metrics_set(pt_metrics_t *m, const char *name, const char *help,
                    const char *labels, double v) {
  series_t *s = find(m, name, help, GAUGE, labels);
  if (s)
    s->value = v;
}

void pt_metrics_observe(pt_metrics_t *m, const char *name, const char *help,
                        const char *labels, double seconds) {
  series_t *s = find(m, name, help, HISTOGRAM, labels);
  if (s == NULL)
    return;
  s->value += seconds;
  s->count++;
  for (int i = 0; i < NBUCKETS; i++)
    if (seconds <= buckets[i]) {
      s->bucket[i]++;
      break;
    }
}

void pt_metrics_label(char *out, size_t len, const char *value) {
  size_t j = 0;
  for (size_t i = 0; value[i] && j + 3 < len; i++) {
    char c = value[i];
    if (c == '\\' || c == '"') {
      out[j++] = '\\';
      out[j++] = c;
    } else if (c == '\n') {
      out[j++] = '\\';
      out[j++] = 'n';
    } else {
      out[j++] = c;
    }
  }
  out[j] = '\0';
}

char *pt_metrics_render(const pt_metrics_t *m, size_t *len) {
  char *buf = NULL;
  size_t size = 0;
  FILE *f = open_memstream(&buf, &size);
  if (f == NULL)
    return NULL;
  static const char *const kinds[] = {"counter", "gauge", "histogram"};
  for (const family_t *fam = m->families; fam != NULL; fam = fam->next) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", fam->name, fam->help,
            fam->name, kinds[fam->kind]);
    for (const series_t *s = fam->series; s != NULL; s = s->next) {
      const char *open = s->labels[0] ? "{" : "", *close = s->labels[0] ? "}" : "";
      if (fam->kind != HISTOGRAM) {
        fprintf(f, "%s%s%s%s %.17g\n", fam->name, open, s->labels, close,
                s->value);
        continue;
      }
      uint64_t cum = 0;
      const char *sep = s->labels[0] ? "," : "";
      for (int i = 0; i < NBUCKETS; i++) {
        cum += s->bucket[i];
        fprintf(f, "%s_bucket{%s%sle=\"%g\"} %llu\n", fam->name, s->labels,
                sep, buckets[i], (unsigned long long)cum);
      }
      fprintf(f, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", fam->name, s->labels,
              sep, (unsigned long long)s->count);
      fprintf(f, "%s_sum%s%s%s %.17g\n", fam->name, open, s->labels, close,
              s->value);
      fprintf(f, "%s_count%s%s%s %llu\n", fam->name, open, s->labels, close,
              (unsigned long long)s->count);
    }
  }
  fclose(f);
  if (len)
    *len = size;
  return buf;
}
