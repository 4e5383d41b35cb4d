/* pt_crypto against the public vectors in shared/vectors (Alipay RSA2 and
 * RSA, WeChat Pay v3 signatures and AES-GCM) and a few known answers. Every
 * vector of every file is checked, and each test asserts how many it
 * checked so that a renamed JSON field cannot make it pass vacuously. */
#include <criterion/criterion.h>

#include <bson/bson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pt_crypto.h"

/* ---- reading the vectors ---- */

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return NULL;
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  cr_assert_not_null(buf);
  for (;;) {
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (n < cap)
      break;
    cap *= 2;
    buf = realloc(buf, cap);
    cr_assert_not_null(buf);
  }
  fclose(f);
  *len = n;
  return buf;
}

/* Parses shared/vectors/<name>, found beside the source tree
 * ($PAYTASK_SOURCE_DIR/../shared/vectors) or at /work/shared/vectors. */
static bson_t *load_vectors(const char *name) {
  char path[4096];
  size_t len = 0;
  char *json = NULL;
  const char *src = getenv("PAYTASK_SOURCE_DIR");
  if (src != NULL && src[0] != '\0') {
    snprintf(path, sizeof path, "%s/../shared/vectors/%s", src, name);
    json = read_file(path, &len);
  }
  if (json == NULL) {
    snprintf(path, sizeof path, "/work/shared/vectors/%s", name);
    json = read_file(path, &len);
  }
  cr_assert_not_null(json, "cannot read vector file %s", name);
  bson_error_t error;
  bson_t *doc = bson_new_from_json((const uint8_t *)json, (ssize_t)len, &error);
  free(json);
  cr_assert_not_null(doc, "%s: %s", path, error.message);
  return doc;
}

/* The UTF-8 string at key (which must exist); its length into *len. */
static const char *str_len(const bson_t *doc, const char *key, uint32_t *len) {
  bson_iter_t it;
  cr_assert(bson_iter_init_find(&it, doc, key), "missing field %s", key);
  cr_assert(BSON_ITER_HOLDS_UTF8(&it), "field %s is not a string", key);
  return bson_iter_utf8(&it, len);
}

static const char *str(const bson_t *doc, const char *key) {
  uint32_t len;
  return str_len(doc, key, &len);
}

/* The document or array at key, as a read-only view into doc. */
static void child(const bson_t *doc, const char *key, bson_t *out) {
  bson_iter_t it;
  uint32_t len;
  const uint8_t *data;
  cr_assert(bson_iter_init_find(&it, doc, key), "missing field %s", key);
  if (BSON_ITER_HOLDS_ARRAY(&it))
    bson_iter_array(&it, &len, &data);
  else if (BSON_ITER_HOLDS_DOCUMENT(&it))
    bson_iter_document(&it, &len, &data);
  else
    cr_assert_fail("field %s is not a document or array", key);
  cr_assert(bson_init_static(out, data, len));
}

/* The element of an array that it points at, which must be a document. */
static void elem(const bson_iter_t *it, bson_t *out) {
  uint32_t len;
  const uint8_t *data;
  cr_assert(BSON_ITER_HOLDS_DOCUMENT(it), "array element is not an object");
  bson_iter_document(it, &len, &data);
  cr_assert(bson_init_static(out, data, len));
}

#define EACH(arr, it, item)                                                  \
  for (bson_iter_init(&(it), (arr)); bson_iter_next(&(it)) &&               \
                                     (elem(&(it), &(item)), 1);)

static pt_crypto_key_t *key_private(const char *pem) {
  pt_crypto_key_t *k = NULL;
  pt_error_t e = {0};
  cr_assert_eq(pt_crypto_key_new_private(pem, strlen(pem), &k, &e), 0, "%s",
               e.message);
  return k;
}

static pt_crypto_key_t *key_public(const char *pem) {
  pt_crypto_key_t *k = NULL;
  pt_error_t e = {0};
  cr_assert_eq(pt_crypto_key_new_public(pem, strlen(pem), &k, &e), 0, "%s",
               e.message);
  return k;
}

static pt_crypto_key_t *key_cert(const char *pem) {
  pt_crypto_key_t *k = NULL;
  pt_error_t e = {0};
  cr_assert_eq(pt_crypto_key_new_from_cert(pem, strlen(pem), &k, &e), 0, "%s",
               e.message);
  return k;
}

/* Signing msg with priv gives sig_b64 byte for byte (PKCS#1 v1.5 is
 * deterministic), and sig_b64 verifies with every key of verifiers. */
static void check_rsa(const pt_crypto_key_t *priv,
                      const pt_crypto_key_t *const *verifiers, size_t nv,
                      pt_crypto_hash_t hash, const char *msg, size_t len,
                      const char *sig_b64, const char *what) {
  char *sig = NULL;
  size_t sig_len = 0;
  pt_error_t e = {0};
  cr_assert_eq(pt_crypto_rsa_sign(priv, hash, msg, len, &sig, &sig_len, &e), 0,
               "%s: %s", what, e.message);
  cr_assert_eq(sig_len, strlen(sig_b64), "%s: signature length", what);
  cr_assert_str_eq(sig, sig_b64, "%s: signature not reproduced", what);
  free(sig);
  for (size_t i = 0; i < nv; i++)
    cr_assert_eq(pt_crypto_rsa_verify(verifiers[i], hash, msg, len, sig_b64, &e),
                 0, "%s: verifier %zu: %s", what, i, e.message);
}

static void check_refused(const pt_crypto_key_t *const *verifiers, size_t nv,
                          pt_crypto_hash_t hash, const char *msg, size_t len,
                          const char *sig_b64, const char *what) {
  for (size_t i = 0; i < nv; i++) {
    pt_error_t e = {0};
    cr_assert_eq(pt_crypto_rsa_verify(verifiers[i], hash, msg, len, sig_b64, &e),
                 PT_ECRYPTO, "%s: verifier %zu accepted a bad signature", what,
                 i);
    cr_assert_eq(e.code, PT_ECRYPTO);
  }
}

/* ---- base64 and HMAC ---- */

Test(crypto, base64_rfc4648) {
  static const char *const vec[][2] = {
      {"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
      {"foo", "Zm9v"},  {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"}};
  for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
    char *enc = NULL;
    unsigned char *dec = NULL;
    size_t n = 99;
    cr_assert_eq(pt_crypto_base64_encode(vec[i][0], strlen(vec[i][0]), &enc, &n,
                                         NULL),
                 0);
    cr_assert_str_eq(enc, vec[i][1]);
    cr_assert_eq(n, strlen(vec[i][1]));
    cr_assert_eq(pt_crypto_base64_decode(enc, n, &dec, &n, NULL), 0);
    cr_assert_eq(n, strlen(vec[i][0]), "padding must not count as bytes");
    cr_assert_eq(memcmp(dec, vec[i][0], n), 0);
    cr_assert_eq(dec[n], '\0');
    free(enc);
    free(dec);
  }
}

Test(crypto, base64_binary_round_trip) {
  unsigned char data[300];
  for (size_t i = 0; i < sizeof data; i++)
    data[i] = (unsigned char)(255 - i * 7);
  for (size_t len = 0; len <= sizeof data; len += (len < 70 ? 1 : 23)) {
    char *enc = NULL;
    unsigned char *dec = NULL;
    size_t n = 0, m = 0;
    cr_assert_eq(pt_crypto_base64_encode(data, len, &enc, &n, NULL), 0);
    cr_assert_eq(n, (len + 2) / 3 * 4);
    cr_assert_eq(pt_crypto_base64_decode(enc, n, &dec, &m, NULL), 0);
    cr_assert_eq(m, len);
    cr_assert_eq(memcmp(dec, data, len), 0);
    free(enc);
    free(dec);
  }
}

Test(crypto, base64_decode_is_strict) {
  /* All of these EVP_DecodeBlock alone would accept or mis-size. */
  static const char *const bad[] = {"Zg=",  "Zg",       "Z===",     "=Zg=",
                                    "Zg=a", "Zg==Zg==", " Zm9v",    "Zm9v\n",
                                    "Zm 9", "Zm9v====", "Zm9-",     "Zm9_"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    unsigned char *dec = (unsigned char *)"x";
    size_t n = 7;
    pt_error_t e = {0};
    cr_assert_eq(pt_crypto_base64_decode(bad[i], strlen(bad[i]), &dec, &n, &e),
                 PT_EINVAL, "accepted \"%s\"", bad[i]);
    cr_assert_null(dec);
    cr_assert_eq(n, 0);
    cr_assert_eq(e.code, PT_EINVAL);
  }
}

/* FIPS 180-2's examples, and the empty input. */
Test(crypto, sha256_hex) {
  char hex[PT_CRYPTO_SHA256_HEX_LEN + 1];
  pt_crypto_sha256_hex("abc", 3, hex);
  cr_assert_str_eq(
      hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  pt_crypto_sha256_hex(NULL, 0, hex);
  cr_assert_str_eq(
      hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

Test(crypto, hmac_sha256_rfc4231) {
  char hex[PT_CRYPTO_HMAC_SHA256_HEX_LEN + 1];
  unsigned char k1[20];
  memset(k1, 0x0b, sizeof k1);
  cr_assert_eq(pt_crypto_hmac_sha256_hex(k1, sizeof k1, "Hi There", 8, hex,
                                         NULL),
               0);
  cr_assert_str_eq(
      hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  const char *d2 = "what do ya want for nothing?";
  cr_assert_eq(pt_crypto_hmac_sha256_hex("Jefe", 4, d2, strlen(d2), hex, NULL),
               0);
  cr_assert_str_eq(
      hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  /* Test case 6: a key longer than the block size is hashed first. */
  unsigned char k6[131];
  memset(k6, 0xaa, sizeof k6);
  const char *d6 = "Test Using Larger Than Block-Size Key - Hash Key First";
  cr_assert_eq(pt_crypto_hmac_sha256_hex(k6, sizeof k6, d6, strlen(d6), hex,
                                         NULL),
               0);
  cr_assert_str_eq(
      hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

/* ---- Alipay ---- */

/* Rebuilds string_to_sign from params_without_sign, adding the entries the
 * rule says to drop (sign, empty and whitespace-only values, NULLs). */
static void check_alipay_string(const bson_t *c, const char *what) {
  bson_t params;
  bson_iter_t it;
  pt_crypto_kv_t kv[32];
  size_t n = 0;
  child(c, "params_without_sign", &params);
  kv[n++] = (pt_crypto_kv_t){"sign", str(c, "signature_base64")};
  for (bson_iter_init(&it, &params); bson_iter_next(&it);) {
    cr_assert(BSON_ITER_HOLDS_UTF8(&it));
    cr_assert_lt(n, 28u);
    kv[n++] = (pt_crypto_kv_t){bson_iter_key(&it), bson_iter_utf8(&it, NULL)};
  }
  kv[n++] = (pt_crypto_kv_t){"charset", ""};
  kv[n++] = (pt_crypto_kv_t){"notify_url", " \t "};
  kv[n++] = (pt_crypto_kv_t){"return_url", NULL};
  kv[n++] = (pt_crypto_kv_t){"", "orphan value"};

  char *s = NULL;
  size_t len = 0;
  pt_error_t e = {0};
  cr_assert_eq(pt_crypto_alipay_string_to_sign(kv, n, 0, &s, &len, &e), 0, "%s",
               e.message);
  cr_assert_str_eq(s, str(c, "string_to_sign"), "%s: string to sign", what);
  cr_assert_eq(len, strlen(s));
  free(s);

  /* A notification (rsaCheckV1) also drops sign_type. */
  cr_assert_eq(pt_crypto_alipay_string_to_sign(
                   kv, n, PT_CRYPTO_ALIPAY_DROP_SIGN_TYPE, &s, &len, &e),
               0);
  cr_assert_null(strstr(s, "sign_type"), "%s: %s", what, s);
  cr_assert_not_null(strstr(s, "app_id="));
  free(s);
}

Test(crypto, alipay_vectors) {
  bson_t *v = load_vectors("alipay_rsa2.json");
  pt_crypto_key_t *priv = key_private(str(v, "private_key_pem"));
  pt_crypto_key_t *pub = key_public(str(v, "public_key_pem"));
  pt_crypto_key_t *cert = key_cert(str(v, "certificate_pem"));
  const pt_crypto_key_t *verifiers[] = {pub, cert, priv};
  bson_t arr, c;
  bson_iter_t it;
  int rsa2 = 0, rsa1 = 0, neg = 0;

  child(v, "cases", &arr);
  EACH(&arr, it, c) {
    const char *msg = str(&c, "string_to_sign");
    check_alipay_string(&c, str(&c, "test"));
    check_rsa(priv, verifiers, 3, PT_CRYPTO_SHA256, msg, strlen(msg),
              str(&c, "signature_base64"), str(&c, "test"));
    /* The same signature is no SHA-1 signature. */
    check_refused(verifiers, 3, PT_CRYPTO_SHA1, msg, strlen(msg),
                  str(&c, "signature_base64"), str(&c, "test"));
    rsa2++;
  }
  child(v, "rsa_sha1_cases", &arr);
  EACH(&arr, it, c) {
    const char *msg = str(&c, "string_to_sign");
    check_alipay_string(&c, str(&c, "test"));
    check_rsa(priv, verifiers, 3, PT_CRYPTO_SHA1, msg, strlen(msg),
              str(&c, "signature_base64"), str(&c, "test"));
    check_refused(verifiers, 3, PT_CRYPTO_SHA256, msg, strlen(msg),
                  str(&c, "signature_base64"), str(&c, "test"));
    rsa1++;
  }
  child(v, "negative_cases", &arr);
  EACH(&arr, it, c) {
    const char *msg = str(&c, "string_to_sign");
    cr_assert_str_eq(str(&c, "expect"), "verify_fails");
    check_refused(verifiers, 3, PT_CRYPTO_SHA256, msg, strlen(msg),
                  str(&c, "signature_base64"), "alipay negative");
    check_refused(verifiers, 3, PT_CRYPTO_SHA1, msg, strlen(msg),
                  str(&c, "signature_base64"), "alipay negative");
    neg++;
  }
  cr_assert_eq(rsa2, 2);
  cr_assert_eq(rsa1, 1);
  cr_assert_eq(neg, 1);
  pt_crypto_key_destroy(priv);
  pt_crypto_key_destroy(pub);
  pt_crypto_key_destroy(cert);
  bson_destroy(v);
}

/* The rule of string_to_sign_rule, case by case. */
Test(crypto, alipay_string_to_sign_rule) {
  const pt_crypto_kv_t kv[] = {
      {"sign_type", "RSA2"}, {"b", "2"},        {"sign", "xyz"},
      {"A", "upper"},        {"a", "x=y&z 1"},  {"empty", ""},
      {"blank", " \r\n"},    {"nul", NULL},     {NULL, "v"},
      {"a_b", "3"},          {"ab", "中文"},
  };
  char *s = NULL;
  size_t len = 0;
  cr_assert_eq(pt_crypto_alipay_string_to_sign(kv, sizeof kv / sizeof kv[0], 0,
                                               &s, &len, NULL),
               0);
  /* Byte order: 'A' < 'a' < "a_b" < "ab" < "b" < "sign_type"; raw values. */
  cr_assert_str_eq(s, "A=upper&a=x=y&z 1&a_b=3&ab=中文&b=2&sign_type=RSA2");
  free(s);
  cr_assert_eq(pt_crypto_alipay_string_to_sign(kv, sizeof kv / sizeof kv[0],
                                               PT_CRYPTO_ALIPAY_DROP_SIGN_TYPE,
                                               &s, &len, NULL),
               0);
  cr_assert_str_eq(s, "A=upper&a=x=y&z 1&a_b=3&ab=中文&b=2");
  free(s);

  cr_assert_eq(pt_crypto_alipay_string_to_sign(NULL, 0, 0, &s, &len, NULL), 0);
  cr_assert_str_eq(s, "");
  cr_assert_eq(len, 0);
  free(s);

  const pt_crypto_kv_t dup[] = {{"a", "1"}, {"b", "2"}, {"a", "3"}};
  pt_error_t e = {0};
  cr_assert_eq(pt_crypto_alipay_string_to_sign(dup, 3, 0, &s, &len, &e),
               PT_EINVAL);
  cr_assert_null(s);
  cr_assert_eq(e.code, PT_EINVAL);
}

/* PKCS#1 "RSA PRIVATE KEY" PEM loads too and signs the same. */
Test(crypto, pkcs1_private_key) {
  bson_t *v = load_vectors("alipay_rsa2.json");
  const char *pem8 = str(v, "private_key_pem");
  BIO *in = BIO_new_mem_buf(pem8, -1);
  EVP_PKEY *pkey = PEM_read_bio_PrivateKey(in, NULL, NULL, NULL);
  cr_assert_not_null(pkey);
  BIO *out = BIO_new(BIO_s_mem());
  cr_assert(PEM_write_bio_PrivateKey_traditional(out, pkey, NULL, NULL, 0, NULL,
                                                 NULL));
  char *pem1 = NULL;
  long len = BIO_get_mem_data(out, &pem1);
  cr_assert_gt(len, 0);
  cr_assert_not_null(strstr(pem1, "-----BEGIN RSA PRIVATE KEY-----"));

  pt_crypto_key_t *k = NULL;
  cr_assert_eq(pt_crypto_key_new_private(pem1, (size_t)len, &k, NULL), 0);
  pt_crypto_key_t *pub = key_public(str(v, "public_key_pem"));
  const pt_crypto_key_t *verifiers[] = {pub};
  bson_t arr, c;
  bson_iter_t it;
  child(v, "cases", &arr);
  EACH(&arr, it, c) {
    const char *msg = str(&c, "string_to_sign");
    check_rsa(k, verifiers, 1, PT_CRYPTO_SHA256, msg, strlen(msg),
              str(&c, "signature_base64"), "PKCS#1 key");
  }
  pt_crypto_key_destroy(k);
  pt_crypto_key_destroy(pub);
  BIO_free(out);
  BIO_free(in);
  EVP_PKEY_free(pkey);
  bson_destroy(v);
}

Test(crypto, key_errors) {
  bson_t *v = load_vectors("alipay_rsa2.json");
  const char *pub_pem = str(v, "public_key_pem");
  const char *priv_pem = str(v, "private_key_pem");
  pt_crypto_key_t *k = (pt_crypto_key_t *)1;
  pt_error_t e = {0};

  cr_assert_eq(pt_crypto_key_new_private(pub_pem, strlen(pub_pem), &k, &e),
               PT_EINVAL);
  cr_assert_null(k);
  cr_assert_eq(e.code, PT_EINVAL);
  cr_assert_eq(pt_crypto_key_new_public(priv_pem, strlen(priv_pem), &k, &e),
               PT_EINVAL);
  cr_assert_eq(pt_crypto_key_new_from_cert(pub_pem, strlen(pub_pem), &k, &e),
               PT_EINVAL);
  cr_assert_eq(pt_crypto_key_new_private("garbage", 7, &k, &e), PT_EINVAL);
  cr_assert_eq(pt_crypto_key_new_public("", 0, &k, &e), PT_EINVAL);
  /* A truncated key is refused, not half-loaded. */
  cr_assert_eq(pt_crypto_key_new_private(priv_pem, strlen(priv_pem) / 2, &k, &e),
               PT_EINVAL);
  cr_assert_null(strstr(e.message, "MII"), "no key bytes in messages");
  cr_assert_eq(ERR_peek_error(), 0, "OpenSSL's error queue is left empty");

  /* A public key cannot sign. */
  pt_crypto_key_t *pub = key_public(pub_pem);
  char *sig = (char *)1;
  size_t n = 5;
  cr_assert_eq(pt_crypto_rsa_sign(pub, PT_CRYPTO_SHA256, "m", 1, &sig, &n, &e),
               PT_EINVAL);
  cr_assert_null(sig);
  cr_assert_eq(n, 0);
  /* A signature that is not base64 is an argument error, not a mismatch. */
  cr_assert_eq(pt_crypto_rsa_verify(pub, PT_CRYPTO_SHA256, "m", 1, "not b64!",
                                    &e),
               PT_EINVAL);
  /* Valid base64 of the wrong length is a mismatch. */
  cr_assert_eq(pt_crypto_rsa_verify(pub, PT_CRYPTO_SHA256, "m", 1, "AAAA", &e),
               PT_ECRYPTO);
  cr_assert_eq(ERR_peek_error(), 0);
  pt_crypto_key_destroy(pub);
  pt_crypto_key_destroy(NULL);
  bson_destroy(v);
}

/* ---- WeChat Pay signatures ---- */

Test(crypto, wechat_sign_vectors) {
  bson_t *v = load_vectors("wechat_sign.json");
  pt_crypto_key_t *priv = key_private(str(v, "private_key_pem"));
  pt_crypto_key_t *pub = key_public(str(v, "public_key_pem"));
  pt_crypto_key_t *certs[4];
  size_t ncert = 0;
  bson_t arr, c, sets, set, certmap;
  bson_iter_t it, jt;
  int cases = 0, neg = 0, derived = 0, extra_cases = 0, extra_neg = 0;
  int nsets = 0;

  child(v, "platform_certificates", &certmap);
  for (bson_iter_init(&it, &certmap); bson_iter_next(&it);) {
    cr_assert(BSON_ITER_HOLDS_UTF8(&it));
    cr_assert_lt(ncert, 4u);
    certs[ncert++] = key_cert(bson_iter_utf8(&it, NULL));
  }
  cr_assert_eq(ncert, 2);
  const pt_crypto_key_t *verifiers[] = {pub, certs[0], certs[1], priv};

  child(v, "cases", &arr);
  EACH(&arr, it, c) {
    uint32_t mlen;
    const char *msg = str_len(&c, "message", &mlen);
    bson_iter_t f;
    if (bson_iter_init_find(&f, &c, "timestamp")) {
      /* A callback: the message is rebuilt from its headers and body. */
      uint32_t blen;
      const char *body = str_len(&c, "body", &blen);
      char *m = NULL;
      size_t len = 0;
      cr_assert_eq(pt_crypto_wechat_response_message(str(&c, "timestamp"),
                                                     str(&c, "nonce"), body,
                                                     blen, &m, &len, NULL),
                   0);
      cr_assert_eq(len, mlen);
      cr_assert_eq(memcmp(m, msg, len), 0, "callback message differs");
      free(m);
    }
    check_rsa(priv, verifiers, 4, PT_CRYPTO_SHA256, msg, mlen,
              str(&c, "signature_base64"), str(&c, "test"));
    cases++;
  }

  child(v, "negative_cases", &arr);
  EACH(&arr, it, c) {
    uint32_t mlen;
    const char *msg = str_len(&c, "message", &mlen);
    cr_assert_str_eq(str(&c, "expect"), "verify_fails");
    check_refused(verifiers, 4, PT_CRYPTO_SHA256, msg, mlen,
                  str(&c, "signature_base64"), str(&c, "test"));
    neg++;
  }

  child(v, "derived_cases", &arr);
  EACH(&arr, it, c) {
    uint32_t mlen, blen;
    const char *msg = str_len(&c, "message", &mlen);
    const char *body = str_len(&c, "body", &blen);
    char *m = NULL;
    size_t len = 0;
    cr_assert_eq(pt_crypto_wechat_request_message(
                     str(&c, "method"), str(&c, "canonical_url"),
                     str(&c, "timestamp"), str(&c, "nonce_str"), body, blen,
                     &m, &len, NULL),
                 0);
    cr_assert_eq(len, mlen);
    cr_assert_eq(memcmp(m, msg, len), 0, "request message differs: %s", m);
    check_rsa(priv, verifiers, 4, PT_CRYPTO_SHA256, m, len,
              str(&c, "signature_base64"), str(&c, "method"));
    /* The example header carries exactly this signature. */
    cr_assert_not_null(strstr(str(&c, "authorization_header_example"),
                              str(&c, "signature_base64")));
    free(m);
    derived++;
  }

  child(v, "extra_key_sets", &sets);
  EACH(&sets, jt, set) {
    pt_crypto_key_t *p2 = key_private(str(&set, "private_key_pem"));
    pt_crypto_key_t *u2 = key_public(str(&set, "public_key_pem"));
    pt_crypto_key_t *c2 = key_cert(str(&set, "certificate_pem"));
    const pt_crypto_key_t *v2[] = {u2, c2, p2};
    child(&set, "cases", &arr);
    EACH(&arr, it, c) {
      uint32_t mlen;
      const char *msg = str_len(&c, "message", &mlen);
      check_rsa(p2, v2, 3, PT_CRYPTO_SHA256, msg, mlen,
                str(&c, "signature_base64"), str(&c, "test"));
      /* Signed by another key: the main key set must refuse it. */
      check_refused(verifiers, 4, PT_CRYPTO_SHA256, msg, mlen,
                    str(&c, "signature_base64"), "cross-key");
      extra_cases++;
    }
    child(&set, "negative_cases", &arr);
    EACH(&arr, it, c) {
      uint32_t mlen;
      const char *msg = str_len(&c, "message", &mlen);
      pt_crypto_key_t *other = key_public(str(&c, "public_key_pem"));
      const pt_crypto_key_t *vo[] = {other};
      cr_assert_str_eq(str(&c, "expect"), "verify_fails");
      check_refused(vo, 1, PT_CRYPTO_SHA256, msg, mlen,
                    str(&c, "signature_base64"), str(&c, "test"));
      pt_crypto_key_destroy(other);
      extra_neg++;
    }
    pt_crypto_key_destroy(p2);
    pt_crypto_key_destroy(u2);
    pt_crypto_key_destroy(c2);
    nsets++;
  }

  cr_assert_eq(cases, 2);
  cr_assert_eq(neg, 1);
  cr_assert_eq(derived, 2);
  cr_assert_eq(nsets, 1);
  cr_assert_eq(extra_cases, 1);
  cr_assert_eq(extra_neg, 1);
  for (size_t i = 0; i < ncert; i++)
    pt_crypto_key_destroy(certs[i]);
  pt_crypto_key_destroy(priv);
  pt_crypto_key_destroy(pub);
  bson_destroy(v);
}

Test(crypto, wechat_message_fields) {
  char *m = NULL;
  size_t len = 0;
  cr_assert_eq(pt_crypto_wechat_request_message("GET", "/v3/x?a=1", "1", "n",
                                                NULL, 0, &m, &len, NULL),
               0);
  cr_assert_str_eq(m, "GET\n/v3/x?a=1\n1\nn\n\n");
  cr_assert_eq(len, strlen(m));
  free(m);
  cr_assert_eq(pt_crypto_wechat_response_message("1", "n", "{}", 2, &m, &len,
                                                 NULL),
               0);
  cr_assert_str_eq(m, "1\nn\n{}\n");
  free(m);
  /* A field holding a newline would let one message pass for another. */
  cr_assert_eq(pt_crypto_wechat_request_message("GET", "/a\nb", "1", "n", NULL,
                                                0, &m, &len, NULL),
               PT_EINVAL);
  cr_assert_null(m);
  cr_assert_eq(pt_crypto_wechat_response_message("", "n", "", 0, &m, &len,
                                                 NULL),
               PT_EINVAL);
}

/* ---- WeChat Pay AES-GCM ---- */

static int decrypt_case(const bson_t *c, char **plain, size_t *len,
                        pt_error_t *e) {
  return pt_crypto_wechat_decrypt(str(c, "key"), str(c, "nonce"),
                                  str(c, "associated_data"),
                                  str(c, "ciphertext_base64"), plain, len, e);
}

Test(crypto, wechat_aesgcm_vectors) {
  bson_t *v = load_vectors("wechat_aesgcm.json");
  bson_t arr, c;
  bson_iter_t it;
  int n256 = 0, n128 = 0, neg = 0;
  static const char *const positive[] = {"cases", "aes128_gcm_cases"};

  for (size_t g = 0; g < 2; g++) {
    child(v, positive[g], &arr);
    EACH(&arr, it, c) {
      char *plain = NULL;
      size_t len = 0;
      uint32_t want_len;
      const char *want = str_len(&c, "plaintext", &want_len);
      pt_error_t e = {0};
      cr_assert_eq(strlen(str(&c, "key")), g == 0 ? 32u : 16u);
      cr_assert_eq(decrypt_case(&c, &plain, &len, &e), 0, "%s: %s",
                   str(&c, "test"), e.message);
      cr_assert_eq(len, want_len, "%s: plaintext length", str(&c, "test"));
      cr_assert_eq(memcmp(plain, want, len), 0, "%s", str(&c, "test"));
      cr_assert_eq(plain[len], '\0');
      free(plain);
      if (g == 0)
        n256++;
      else
        n128++;
    }
  }

  child(v, "negative_cases", &arr);
  EACH(&arr, it, c) {
    char *plain = (char *)1;
    size_t len = 9;
    pt_error_t e = {0};
    cr_assert_str_eq(str(&c, "expect"), "authentication_fails");
    cr_assert_eq(decrypt_case(&c, &plain, &len, &e), PT_ECRYPTO, "%s",
                 str(&c, "test"));
    cr_assert_eq(e.code, PT_ECRYPTO);
    cr_assert_null(plain, "no plaintext after a failed tag");
    cr_assert_eq(len, 0);
    neg++;
  }
  cr_assert_eq(n256, 2);
  cr_assert_eq(n128, 2);
  cr_assert_eq(neg, 3);
  cr_assert_eq(ERR_peek_error(), 0);
  bson_destroy(v);
}

Test(crypto, aesgcm_argument_errors) {
  unsigned char ct[32] = {0};
  unsigned char *plain = NULL;
  size_t len = 0;
  pt_error_t e = {0};
  /* 24-byte keys (AES-192) are no WeChat key. */
  cr_assert_eq(pt_crypto_aes_gcm_decrypt("012345678901234567890123", 24,
                                         "012345678901", 12, NULL, 0, ct, 32,
                                         &plain, &len, &e),
               PT_EINVAL);
  cr_assert_eq(pt_crypto_aes_gcm_decrypt("0123456789012345", 16, "0123456789",
                                         10, NULL, 0, ct, 32, &plain, &len, &e),
               PT_EINVAL);
  cr_assert_eq(pt_crypto_aes_gcm_decrypt("0123456789012345", 16,
                                         "012345678901", 12, NULL, 0, ct, 15,
                                         &plain, &len, &e),
               PT_EINVAL);
  /* Tag only, empty plaintext, wrong tag. */
  cr_assert_eq(pt_crypto_aes_gcm_decrypt("0123456789012345", 16,
                                         "012345678901", 12, NULL, 0, ct, 16,
                                         &plain, &len, &e),
               PT_ECRYPTO);
  cr_assert_null(plain);
  char *p = NULL;
  cr_assert_eq(pt_crypto_wechat_decrypt("a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb",
                                        "uluk4a9R25RW", "associatedData",
                                        "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI",
                                        &p, &len, &e),
               PT_EINVAL, "unpadded base64 is refused");
  cr_assert_null(p);
}
