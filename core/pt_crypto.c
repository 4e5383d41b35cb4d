#include "core/pt_crypto.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

struct pt_crypto_key {
  EVP_PKEY *pkey;
  int has_private;
};

/* Fails with code, adding the reason of OpenSSL's last error (reasons name
 * what went wrong, never key bytes), and empties OpenSSL's per-thread error
 * queue so that a stale entry cannot confuse the next caller (curl's TLS). */
static int ossl_fail(pt_error_t *err, int code, const char *what) {
  unsigned long e = ERR_peek_last_error();
  const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
  int rc = pt_error_set(err, PT_DOMAIN_PAYTASK, code, "%s%s%s", what,
                        reason != NULL ? ": " : "",
                        reason != NULL ? reason : "");
  ERR_clear_error();
  return rc;
}

static int fail(pt_error_t *err, int code, const char *what) {
  return pt_error_set(err, PT_DOMAIN_PAYTASK, code, "%s", what);
}

/* ---- base64 ---- */

int pt_crypto_base64_encode(const void *data, size_t len, char **out,
                            size_t *out_len, pt_error_t *err) {
  *out = NULL;
  *out_len = 0;
  if ((data == NULL && len > 0) || len > (size_t)INT_MAX / 4 * 3)
    return fail(err, PT_EINVAL, "base64: bad input");
  size_t cap = (len + 2) / 3 * 4 + 1;
  char *buf = malloc(cap);
  if (buf == NULL)
    return fail(err, PT_ENOMEM, "base64: out of memory");
  int n = len > 0 ? EVP_EncodeBlock((unsigned char *)buf, data, (int)len) : 0;
  buf[n] = '\0';
  *out = buf;
  *out_len = (size_t)n;
  return 0;
}

static int is_b64_char(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '+' || c == '/';
}

int pt_crypto_base64_decode(const char *text, size_t len, unsigned char **out,
                            size_t *out_len, pt_error_t *err) {
  *out = NULL;
  *out_len = 0;
  if ((text == NULL && len > 0) || len % 4 != 0 || len > (size_t)INT_MAX)
    return fail(err, PT_EINVAL, "base64: length is not a multiple of 4");
  /* EVP_DecodeBlock is lenient in ways we do not want (it trims whitespace,
   * accepts '=' in the middle and "x===") and counts padding as zero bytes in
   * its result, so validate first and subtract the padding after. */
  size_t pad = 0;
  if (len > 0 && text[len - 1] == '=')
    pad++;
  if (len > 1 && text[len - 2] == '=')
    pad++;
  for (size_t i = 0; i < len - pad; i++)
    if (!is_b64_char((unsigned char)text[i]))
      return fail(err, PT_EINVAL, "base64: invalid character");
  unsigned char *buf = malloc(len / 4 * 3 + 1);
  if (buf == NULL)
    return fail(err, PT_ENOMEM, "base64: out of memory");
  int n = len > 0 ? EVP_DecodeBlock(buf, (const unsigned char *)text, (int)len)
                  : 0;
  if (n < 0 || (size_t)n != len / 4 * 3) {
    free(buf);
    return ossl_fail(err, PT_EINVAL, "base64: decode failed");
  }
  buf[(size_t)n - pad] = '\0';
  *out = buf;
  *out_len = (size_t)n - pad;
  return 0;
}

/* ---- keys ---- */

/* Refuses to prompt for a passphrase: OpenSSL's default callback would read
 * the terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf;
  (void)size;
  (void)rwflag;
  (void)u;
  return -1;
}

static int wrap_key(EVP_PKEY *pkey, int has_private, pt_crypto_key_t **out,
                    pt_error_t *err) {
  if (!EVP_PKEY_is_a(pkey, "RSA")) {
    EVP_PKEY_free(pkey);
    return fail(err, PT_EINVAL, "key: not an RSA key");
  }
  pt_crypto_key_t *key = malloc(sizeof *key);
  if (key == NULL) {
    EVP_PKEY_free(pkey);
    return fail(err, PT_ENOMEM, "key: out of memory");
  }
  key->pkey = pkey;
  key->has_private = has_private;
  *out = key;
  return 0;
}

enum { PEM_PRIVATE, PEM_PUBLIC, PEM_CERT };

static int load_key(const char *pem, size_t len, int kind,
                    pt_crypto_key_t **out, pt_error_t *err) {
  static const char *const what[] = {"key: cannot read PEM private key",
                                     "key: cannot read PEM public key",
                                     "key: cannot read PEM certificate"};
  *out = NULL;
  if (pem == NULL || len == 0 || len > (size_t)INT_MAX)
    return fail(err, PT_EINVAL, "key: empty PEM");
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  if (bio == NULL)
    return ossl_fail(err, PT_ENOMEM, "key: out of memory");
  EVP_PKEY *pkey = NULL;
  if (kind == PEM_PRIVATE) {
    pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
  } else if (kind == PEM_PUBLIC) {
    pkey = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
  } else {
    X509 *cert = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
    if (cert != NULL) {
      pkey = X509_get_pubkey(cert); /* a new reference */
      X509_free(cert);
    }
  }
  BIO_free(bio);
  if (pkey == NULL)
    return ossl_fail(err, PT_EINVAL, what[kind]);
  ERR_clear_error();
  return wrap_key(pkey, kind == PEM_PRIVATE, out, err);
}

int pt_crypto_key_new_private(const char *pem, size_t len,
                              pt_crypto_key_t **out, pt_error_t *err) {
  return load_key(pem, len, PEM_PRIVATE, out, err);
}

int pt_crypto_key_new_public(const char *pem, size_t len,
                             pt_crypto_key_t **out, pt_error_t *err) {
  return load_key(pem, len, PEM_PUBLIC, out, err);
}

int pt_crypto_key_new_from_cert(const char *pem, size_t len,
                                pt_crypto_key_t **out, pt_error_t *err) {
  return load_key(pem, len, PEM_CERT, out, err);
}

int pt_crypto_key_sha256_hex(const pt_crypto_key_t *key,
                             char hex[PT_CRYPTO_SHA256_HEX_LEN + 1]) {
  unsigned char *der = NULL;
  int n = key != NULL ? i2d_PUBKEY(key->pkey, &der) : -1;
  if (n <= 0)
    return PT_ECRYPTO;
  pt_crypto_sha256_hex(der, (size_t)n, hex);
  OPENSSL_free(der);
  return 0;
}

void pt_crypto_key_destroy(pt_crypto_key_t *key) {
  if (key == NULL)
    return;
  EVP_PKEY_free(key->pkey);
  free(key);
}

/* ---- signatures ---- */

static const char *hash_name(pt_crypto_hash_t hash) {
  switch (hash) {
  case PT_CRYPTO_SHA256:
    return "SHA256";
  case PT_CRYPTO_SHA1:
    return "SHA1";
  }
  return NULL;
}

int pt_crypto_rsa_sign(const pt_crypto_key_t *key, pt_crypto_hash_t hash,
                       const void *msg, size_t len, char **sig_b64,
                       size_t *sig_len, pt_error_t *err) {
  *sig_b64 = NULL;
  *sig_len = 0;
  const char *md = hash_name(hash);
  if (key == NULL || md == NULL || (msg == NULL && len > 0))
    return fail(err, PT_EINVAL, "sign: bad argument");
  if (!key->has_private)
    return fail(err, PT_EINVAL, "sign: key has no private part");
  if (msg == NULL)
    msg = "";

  int rc = 0;
  unsigned char *sig = NULL;
  size_t n = 0;
  EVP_PKEY_CTX *pctx = NULL; /* owned by ctx */
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (ctx == NULL) {
    rc = ossl_fail(err, PT_ENOMEM, "sign: out of memory");
    goto done;
  }
  if (EVP_DigestSignInit_ex(ctx, &pctx, md, NULL, NULL, key->pkey, NULL) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0 ||
      EVP_DigestSign(ctx, NULL, &n, msg, len) != 1) {
    rc = ossl_fail(err, PT_ECRYPTO, "sign: cannot set up RSA signing");
    goto done;
  }
  sig = malloc(n);
  if (sig == NULL) {
    rc = fail(err, PT_ENOMEM, "sign: out of memory");
    goto done;
  }
  if (EVP_DigestSign(ctx, sig, &n, msg, len) != 1) {
    rc = ossl_fail(err, PT_ECRYPTO, "sign: RSA signing failed");
    goto done;
  }
  rc = pt_crypto_base64_encode(sig, n, sig_b64, sig_len, err);

done:
  free(sig);
  EVP_MD_CTX_free(ctx);
  return rc;
}

int pt_crypto_rsa_verify(const pt_crypto_key_t *key, pt_crypto_hash_t hash,
                         const void *msg, size_t len, const char *sig_b64,
                         pt_error_t *err) {
  const char *md = hash_name(hash);
  if (key == NULL || md == NULL || sig_b64 == NULL ||
      (msg == NULL && len > 0))
    return fail(err, PT_EINVAL, "verify: bad argument");
  if (msg == NULL)
    msg = "";

  unsigned char *sig = NULL;
  size_t sig_len = 0;
  int rc = pt_crypto_base64_decode(sig_b64, strlen(sig_b64), &sig, &sig_len,
                                   err);
  if (rc != 0)
    return rc;
  EVP_PKEY_CTX *pctx = NULL; /* owned by ctx */
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (ctx == NULL) {
    rc = ossl_fail(err, PT_ENOMEM, "verify: out of memory");
    goto done;
  }
  if (EVP_DigestVerifyInit_ex(ctx, &pctx, md, NULL, NULL, key->pkey, NULL) !=
          1 ||
      EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0) {
    rc = ossl_fail(err, PT_ECRYPTO, "verify: cannot set up RSA verification");
    goto done;
  }
  /* 1 is valid; 0 is a wrong signature, < 0 a malformed one: both refused. */
  if (EVP_DigestVerify(ctx, sig, sig_len, msg, len) != 1) {
    ERR_clear_error();
    rc = fail(err, PT_ECRYPTO, "verify: signature does not match");
    goto done;
  }

done:
  free(sig);
  EVP_MD_CTX_free(ctx);
  return rc;
}

/* ---- AES-GCM ---- */

/* The checks both directions make: the cipher for the key's length, a
 * 12-byte nonce, associated data that fits an int. */
static int gcm_check(const void *key, size_t key_len, const void *nonce,
                     size_t nonce_len, const void *aad, size_t aad_len,
                     const EVP_CIPHER **cipher, pt_error_t *err) {
  *cipher = key_len == 32   ? EVP_aes_256_gcm()
            : key_len == 16 ? EVP_aes_128_gcm()
                            : NULL;
  if (key == NULL || *cipher == NULL)
    return fail(err, PT_EINVAL, "aes-gcm: key must be 16 or 32 bytes");
  if (nonce == NULL || nonce_len != PT_CRYPTO_GCM_NONCE_LEN)
    return fail(err, PT_EINVAL, "aes-gcm: nonce must be 12 bytes");
  if ((aad == NULL && aad_len > 0) || aad_len > (size_t)INT_MAX)
    return fail(err, PT_EINVAL, "aes-gcm: bad associated data");
  return 0;
}

/* Starts ctx for one direction (enc 1: encrypt, 0: decrypt) with the key
 * and nonce, and feeds it the associated data; 1 on success. */
static int gcm_begin(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher,
                     const void *key, const void *nonce, size_t nonce_len,
                     const void *aad, size_t aad_len, int enc) {
  int n = 0;
  return EVP_CipherInit_ex(ctx, cipher, NULL, NULL, NULL, enc) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, (int)nonce_len,
                             NULL) == 1 &&
         EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc) == 1 &&
         (aad_len == 0 ||
          EVP_CipherUpdate(ctx, NULL, &n, aad, (int)aad_len) == 1);
}

int pt_crypto_aes_gcm_decrypt(const void *key, size_t key_len,
                              const void *nonce, size_t nonce_len,
                              const void *aad, size_t aad_len, const void *ct,
                              size_t ct_len, unsigned char **plain,
                              size_t *plain_len, pt_error_t *err) {
  *plain = NULL;
  *plain_len = 0;
  const EVP_CIPHER *cipher;
  int rc = gcm_check(key, key_len, nonce, nonce_len, aad, aad_len, &cipher,
                     err);
  if (rc != 0)
    return rc;
  if (ct == NULL || ct_len < PT_CRYPTO_GCM_TAG_LEN || ct_len > (size_t)INT_MAX)
    return fail(err, PT_EINVAL, "aes-gcm: ciphertext shorter than its tag");

  size_t body_len = ct_len - PT_CRYPTO_GCM_TAG_LEN;
  unsigned char tag[PT_CRYPTO_GCM_TAG_LEN];
  memcpy(tag, (const unsigned char *)ct + body_len, sizeof tag);
  int n = 0, fin = 0;
  unsigned char *buf = malloc(body_len + 1);
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (buf == NULL || ctx == NULL) {
    rc = fail(err, PT_ENOMEM, "aes-gcm: out of memory");
    goto done;
  }
  if (!gcm_begin(ctx, cipher, key, nonce, nonce_len, aad, aad_len, 0) ||
      EVP_DecryptUpdate(ctx, buf, &n, ct, (int)body_len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, (int)sizeof tag, tag) !=
          1) {
    rc = ossl_fail(err, PT_ECRYPTO, "aes-gcm: cannot decrypt");
    goto done;
  }
  if (EVP_DecryptFinal_ex(ctx, buf + n, &fin) != 1) {
    ERR_clear_error();
    rc = fail(err, PT_ECRYPTO, "aes-gcm: authentication failed");
    goto done;
  }
  n += fin;
  buf[n] = '\0';
  *plain = buf;
  *plain_len = (size_t)n;
  buf = NULL;

done:
  if (buf != NULL) {
    /* Unauthenticated plaintext must not leak out, even through the heap. */
    OPENSSL_cleanse(buf, body_len);
    free(buf);
  }
  EVP_CIPHER_CTX_free(ctx);
  return rc;
}

int pt_crypto_wechat_decrypt(const char *api_v3_key, const char *nonce,
                             const char *associated_data,
                             const char *ciphertext_b64, char **plain,
                             size_t *plain_len, pt_error_t *err) {
  *plain = NULL;
  *plain_len = 0;
  if (api_v3_key == NULL || nonce == NULL || ciphertext_b64 == NULL)
    return fail(err, PT_EINVAL, "wechat decrypt: missing argument");
  if (associated_data == NULL)
    associated_data = "";
  unsigned char *ct = NULL, *pt = NULL;
  size_t ct_len = 0;
  int rc = pt_crypto_base64_decode(ciphertext_b64, strlen(ciphertext_b64), &ct,
                                   &ct_len, err);
  if (rc != 0)
    return rc;
  rc = pt_crypto_aes_gcm_decrypt(api_v3_key, strlen(api_v3_key), nonce,
                                 strlen(nonce), associated_data,
                                 strlen(associated_data), ct, ct_len, &pt,
                                 plain_len, err);
  free(ct);
  *plain = (char *)pt;
  return rc;
}

/* ---- HMAC ---- */

/* The 32 bytes of a SHA-256 digest or HMAC as lowercase hex, with the
 * NUL. */
static void digest_hex(const unsigned char md[32],
                       char hex[PT_CRYPTO_SHA256_HEX_LEN + 1]) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < 32; i++) {
    hex[2 * i] = digits[md[i] >> 4];
    hex[2 * i + 1] = digits[md[i] & 0xf];
  }
  hex[PT_CRYPTO_SHA256_HEX_LEN] = '\0';
}

void pt_crypto_sha256_hex(const void *data, size_t len,
                          char hex[PT_CRYPTO_SHA256_HEX_LEN + 1]) {
  unsigned char md[32];
  SHA256(data != NULL ? data : (const void *)"", len, md);
  digest_hex(md, hex);
}

int pt_crypto_hmac_sha256_hex(const void *key, size_t key_len,
                              const void *data, size_t len,
                              char hex[PT_CRYPTO_HMAC_SHA256_HEX_LEN + 1],
                              pt_error_t *err) {
  unsigned char mac[32];
  size_t mac_len = 0;
  hex[0] = '\0';
  if ((key == NULL && key_len > 0) || (data == NULL && len > 0))
    return fail(err, PT_EINVAL, "hmac: bad argument");
  if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key != NULL ? key : "",
                key_len, data != NULL ? data : "", len, mac, sizeof mac,
                &mac_len) == NULL ||
      mac_len != sizeof mac)
    return ossl_fail(err, PT_ECRYPTO, "hmac: HMAC-SHA256 failed");
  digest_hex(mac, hex);
  return 0;
}

/* ---- what the channels sign ---- */

/* Alipay's StringUtils.isEmpty: NULL, "" or only (ASCII) whitespace as
 * Java's Character.isWhitespace counts it. */
static int alipay_empty(const char *s) {
  if (s == NULL)
    return 1;
  for (; *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    if (!(c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)))
      return 0;
  }
  return 1;
}

static int kv_cmp(const void *a, const void *b) {
  const pt_crypto_kv_t *x = *(const pt_crypto_kv_t *const *)a;
  const pt_crypto_kv_t *y = *(const pt_crypto_kv_t *const *)b;
  return strcmp(x->key, y->key); /* compares as unsigned char: byte order */
}

int pt_crypto_alipay_string_to_sign(const pt_crypto_kv_t *params, size_t n,
                                    unsigned flags, char **out,
                                    size_t *out_len, pt_error_t *err) {
  *out = NULL;
  *out_len = 0;
  if (params == NULL && n > 0)
    return fail(err, PT_EINVAL, "alipay: no parameters");
  const pt_crypto_kv_t **kept = malloc((n > 0 ? n : 1) * sizeof *kept);
  if (kept == NULL)
    return fail(err, PT_ENOMEM, "alipay: out of memory");
  size_t m = 0, total = 0;
  for (size_t i = 0; i < n; i++) {
    const pt_crypto_kv_t *p = &params[i];
    if (alipay_empty(p->key) || alipay_empty(p->value) ||
        strcmp(p->key, "sign") == 0 ||
        ((flags & PT_CRYPTO_ALIPAY_DROP_SIGN_TYPE) &&
         strcmp(p->key, "sign_type") == 0))
      continue;
    kept[m++] = p;
    total += strlen(p->key) + 1 + strlen(p->value) + 1; /* k=v& */
  }
  qsort(kept, m, sizeof *kept, kv_cmp);
  int rc = 0;
  char *buf = NULL;
  for (size_t i = 1; i < m; i++) {
    if (strcmp(kept[i - 1]->key, kept[i]->key) == 0) {
      rc = fail(err, PT_EINVAL, "alipay: a parameter appears twice");
      goto done;
    }
  }
  buf = malloc(total + 1);
  if (buf == NULL) {
    rc = fail(err, PT_ENOMEM, "alipay: out of memory");
    goto done;
  }
  size_t at = 0;
  for (size_t i = 0; i < m; i++) {
    size_t kl = strlen(kept[i]->key), vl = strlen(kept[i]->value);
    if (i > 0)
      buf[at++] = '&';
    memcpy(buf + at, kept[i]->key, kl);
    at += kl;
    buf[at++] = '=';
    memcpy(buf + at, kept[i]->value, vl);
    at += vl;
  }
  buf[at] = '\0';
  *out = buf;
  *out_len = at;

done:
  free(kept);
  return rc;
}

/* A header field of a WeChat message: present, not empty, one line. */
static int one_line(const char *s) {
  return s != NULL && s[0] != '\0' && strchr(s, '\n') == NULL;
}

/* Joins the fields, each followed by '\n'; the last one has length last_len
 * and may hold any bytes. */
static int join_lines(const char *const *fields, size_t count,
                      size_t last_len, char **out, size_t *out_len,
                      pt_error_t *err) {
  size_t total = 0;
  for (size_t i = 0; i < count; i++)
    total += (i + 1 < count ? strlen(fields[i]) : last_len) + 1;
  char *buf = malloc(total + 1);
  if (buf == NULL)
    return fail(err, PT_ENOMEM, "wechat: out of memory");
  size_t at = 0;
  for (size_t i = 0; i < count; i++) {
    size_t l = i + 1 < count ? strlen(fields[i]) : last_len;
    if (l > 0)
      memcpy(buf + at, fields[i], l);
    at += l;
    buf[at++] = '\n';
  }
  buf[at] = '\0';
  *out = buf;
  *out_len = at;
  return 0;
}

int pt_crypto_wechat_request_message(const char *method, const char *url,
                                     const char *timestamp, const char *nonce,
                                     const char *body, size_t body_len,
                                     char **out, size_t *out_len,
                                     pt_error_t *err) {
  *out = NULL;
  *out_len = 0;
  if (!one_line(method) || !one_line(url) || !one_line(timestamp) ||
      !one_line(nonce) || (body == NULL && body_len > 0))
    return fail(err, PT_EINVAL, "wechat: bad request message field");
  const char *fields[] = {method, url, timestamp, nonce,
                          body != NULL ? body : ""};
  return join_lines(fields, 5, body_len, out, out_len, err);
}

int pt_crypto_wechat_response_message(const char *timestamp, const char *nonce,
                                      const char *body, size_t body_len,
                                      char **out, size_t *out_len,
                                      pt_error_t *err) {
  *out = NULL;
  *out_len = 0;
  if (!one_line(timestamp) || !one_line(nonce) ||
      (body == NULL && body_len > 0))
    return fail(err, PT_EINVAL, "wechat: bad response message field");
  const char *fields[] = {timestamp, nonce, body != NULL ? body : ""};
  return join_lines(fields, 3, body_len, out, out_len, err);
}

/* ---- added for the channel simulator ---- */

int pt_crypto_aes_gcm_encrypt(const void *key, size_t key_len,
                              const void *nonce, size_t nonce_len,
                              const void *aad, size_t aad_len,
                              const void *plain, size_t plain_len,
                              unsigned char **ct, size_t *ct_len,
                              pt_error_t *err) {
  *ct = NULL;
  *ct_len = 0;
  const EVP_CIPHER *cipher;
  int rc = gcm_check(key, key_len, nonce, nonce_len, aad, aad_len, &cipher,
                     err);
  if (rc != 0)
    return rc;
  if ((plain == NULL && plain_len > 0) ||
      plain_len > (size_t)INT_MAX - PT_CRYPTO_GCM_TAG_LEN)
    return fail(err, PT_EINVAL, "aes-gcm: bad plaintext");

  int n = 0, fin = 0;
  unsigned char *buf = malloc(plain_len + PT_CRYPTO_GCM_TAG_LEN + 1);
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (buf == NULL || ctx == NULL) {
    rc = fail(err, PT_ENOMEM, "aes-gcm: out of memory");
    goto done;
  }
  if (!gcm_begin(ctx, cipher, key, nonce, nonce_len, aad, aad_len, 1) ||
      (plain_len > 0 &&
       EVP_EncryptUpdate(ctx, buf, &n, plain, (int)plain_len) != 1) ||
      EVP_EncryptFinal_ex(ctx, buf + (plain_len > 0 ? n : 0), &fin) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, PT_CRYPTO_GCM_TAG_LEN,
                          buf + plain_len) != 1) {
    rc = ossl_fail(err, PT_ECRYPTO, "aes-gcm: cannot encrypt");
    goto done;
  }
  buf[plain_len + PT_CRYPTO_GCM_TAG_LEN] = '\0';
  *ct = buf;
  *ct_len = plain_len + PT_CRYPTO_GCM_TAG_LEN;
  buf = NULL;

done:
  free(buf);
  EVP_CIPHER_CTX_free(ctx);
  return rc;
}

int pt_crypto_aes_gcm_encrypt_b64(const void *key, size_t key_len,
                                  const char *nonce, const char *aad,
                                  const void *plain, size_t plain_len,
                                  char **ct_b64, size_t *b64_len,
                                  pt_error_t *err) {
  *ct_b64 = NULL;
  *b64_len = 0;
  if (nonce == NULL)
    return fail(err, PT_EINVAL, "aes-gcm: missing nonce");
  unsigned char *ct = NULL;
  size_t ct_len = 0;
  int rc = pt_crypto_aes_gcm_encrypt(key, key_len, nonce, strlen(nonce), aad,
                                     aad != NULL ? strlen(aad) : 0, plain,
                                     plain_len, &ct, &ct_len, err);
  if (rc != 0)
    return rc;
  rc = pt_crypto_base64_encode(ct, ct_len, ct_b64, b64_len, err);
  free(ct);
  return rc;
}

int pt_crypto_wechat_encrypt(const char *api_v3_key, const char *nonce,
                             const char *associated_data, const void *plain,
                             size_t plain_len, char **ciphertext_b64,
                             size_t *b64_len, pt_error_t *err) {
  *ciphertext_b64 = NULL;
  *b64_len = 0;
  if (api_v3_key == NULL || nonce == NULL)
    return fail(err, PT_EINVAL, "wechat encrypt: missing argument");
  return pt_crypto_aes_gcm_encrypt_b64(api_v3_key, strlen(api_v3_key), nonce,
                                       associated_data, plain, plain_len,
                                       ciphertext_b64, b64_len, err);
}
int pt_crypto_random_bytes(void *buf, size_t len, pt_error_t *err) {
  if (buf == NULL && len > 0)
    return fail(err, PT_EINVAL, "random: bad argument");
  if (len > (size_t)INT_MAX || (len > 0 && RAND_bytes(buf, (int)len) != 1))
    return ossl_fail(err, PT_ECRYPTO, "random: RAND_bytes failed");
  return 0;
}

int pt_crypto_random_alnum(char *out, size_t len, pt_error_t *err) {
  static const char alphabet[] =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  unsigned char pool[64];
  size_t at = 0;
  if (out == NULL)
    return fail(err, PT_EINVAL, "random: bad argument");
  while (at < len) {
    int rc = pt_crypto_random_bytes(pool, sizeof pool, err);
    if (rc != 0) {
      out[0] = '\0';
      return rc;
    }
    /* 248 = 4 * 62: bytes above it are dropped so every character is
     * equally likely. */
    for (size_t i = 0; i < sizeof pool && at < len; i++)
      if (pool[i] < 248)
        out[at++] = alphabet[pool[i] % 62];
  }
  out[len] = '\0';
  return 0;
}
