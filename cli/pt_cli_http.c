#include "cli/pt_cli_http.h"

#include <curl/curl.h>
#include <stdio.h>

long pt_cli_http(const pt_cli_req_t *r, pt_buf_t *out, const char **err) {
  CURL *h = curl_easy_init();
  struct curl_slist *hdrs = NULL;
  char auth[1100], key[300];
  long status = -1;
  out->data = NULL;
  out->len = 0;
  if (err != NULL)
    *err = "out of memory";
  if (h == NULL)
    return -1;
  hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
  if (r->token != NULL) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", r->token);
    hdrs = curl_slist_append(hdrs, auth);
  }
  if (r->idem_key != NULL) {
    snprintf(key, sizeof key, "Idempotency-Key: %s", r->idem_key);
    hdrs = curl_slist_append(hdrs, key);
  }
  curl_easy_setopt(h, CURLOPT_URL, r->url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, r->method);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, r->timeout_ms);
  if (r->body != NULL)
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->body);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, pt_buf_curl_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
  CURLcode rc = curl_easy_perform(h);
  if (rc == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  else {
    if (err != NULL)
      *err = curl_easy_strerror(rc);
    long sent = 0; /* bytes of the request that left */
    curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &sent);
    if (sent > 0)
      status = -2;
  }
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  return status;
}
