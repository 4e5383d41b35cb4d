/* The cryptography the payment channels need, on OpenSSL 3: base64, RSA
 * keys from PEM, RSASSA-PKCS1-v1_5 signatures (SHA-256 for Alipay RSA2 and
 * WeChat Pay v3, SHA-1 for Alipay's legacy "RSA"), AES-GCM decryption of
 * WeChat Pay notifications, HMAC-SHA256 for merchant notifications, and the
 * exact byte strings each channel signs.
 *
 * Every function returns 0 or a negative code from core/pt_error.h and fills
 * *err (which may be NULL) on failure. Buffers returned through out-
 * parameters are malloc'd, NUL-terminated (so text may be used as a C
 * string) and owned by the caller, who free()s them; on failure they are set
 * to NULL and their lengths to 0. No function logs or prints, and no error
 * message ever contains key material. */
#ifndef PT_CRYPTO_H
#define PT_CRYPTO_H

#include <stddef.h>

#include "core/pt_error.h"

/* ---- base64 (RFC 4648 standard alphabet, with '=' padding) ---- */

/* Encodes len bytes of data (data may be NULL when len is 0). */
int pt_crypto_base64_encode(const void *data, size_t len, char **out,
                            size_t *out_len, pt_error_t *err);

/* Decodes exactly len characters of text. Strict: the length must be a
 * multiple of 4, only the alphabet is allowed (no whitespace or line breaks),
 * and at most two '=' may appear, only at the end. PT_EINVAL otherwise. */
int pt_crypto_base64_decode(const char *text, size_t len, unsigned char **out,
                            size_t *out_len, pt_error_t *err);

/* ---- RSA keys ---- */

/* An RSA key, private (which can also verify) or public only. Opaque. */
typedef struct pt_crypto_key pt_crypto_key_t;

/* A SHA-256 digest written in hex, without the NUL. */
#define PT_CRYPTO_SHA256_HEX_LEN 64

/* Loads a private key from PEM text: PKCS#8 "PRIVATE KEY" or PKCS#1
 * "RSA PRIVATE KEY". Encrypted keys are refused (no passphrase prompt). */
int pt_crypto_key_new_private(const char *pem, size_t len,
                              pt_crypto_key_t **out, pt_error_t *err);

/* Loads a public key from PEM text ("PUBLIC KEY", SubjectPublicKeyInfo). */
int pt_crypto_key_new_public(const char *pem, size_t len,
                             pt_crypto_key_t **out, pt_error_t *err);

/* Loads the public key of an X.509 certificate in PEM ("CERTIFICATE"). The
 * certificate's validity and issuer are NOT checked here. */
int pt_crypto_key_new_from_cert(const char *pem, size_t len,
                                pt_crypto_key_t **out, pt_error_t *err);

/* SHA-256 of the key's public half in DER (SubjectPublicKeyInfo), as
 * lowercase hex: the same for a key read from a PEM public key, a
 * certificate or a private key. Returns 0 or PT_ECRYPTO. */
int pt_crypto_key_sha256_hex(const pt_crypto_key_t *key,
                             char hex[PT_CRYPTO_SHA256_HEX_LEN + 1]);

/* Frees a key; NULL does nothing. */
void pt_crypto_key_destroy(pt_crypto_key_t *key);

/* ---- RSASSA-PKCS1-v1_5 signatures ---- */

typedef enum {
  PT_CRYPTO_SHA256 = 0, /* Alipay RSA2, WeChat Pay v3 */
  PT_CRYPTO_SHA1 = 1    /* Alipay legacy sign_type=RSA; verify old peers only */
} pt_crypto_hash_t;

/* Signs len bytes of msg with a private key; *sig_b64 gets the base64
 * signature. PT_EINVAL if key has no private part. Deterministic: the same
 * key and message always give the same signature. */
int pt_crypto_rsa_sign(const pt_crypto_key_t *key, pt_crypto_hash_t hash,
                       const void *msg, size_t len, char **sig_b64,
                       size_t *sig_len, pt_error_t *err);

/* Verifies a base64 signature (NUL-terminated) over len bytes of msg.
 * Returns 0 only when the signature is valid; PT_ECRYPTO when it is not;
 * PT_EINVAL when sig_b64 is not valid base64. */
int pt_crypto_rsa_verify(const pt_crypto_key_t *key, pt_crypto_hash_t hash,
                         const void *msg, size_t len, const char *sig_b64,
                         pt_error_t *err);

/* ---- AES-GCM ---- */

#define PT_CRYPTO_GCM_TAG_LEN 16
#define PT_CRYPTO_GCM_NONCE_LEN 12

/* Decrypts ct (ciphertext followed by its 16-byte tag, ct_len >= 16) with
 * AES-256-GCM (key_len 32) or AES-128-GCM (key_len 16), a 12-byte nonce and
 * aad (may be NULL when aad_len is 0). PT_ECRYPTO when the tag does not
 * authenticate (no plaintext is returned then); PT_EINVAL for a bad key,
 * nonce or ciphertext length. */
int pt_crypto_aes_gcm_decrypt(const void *key, size_t key_len,
                              const void *nonce, size_t nonce_len,
                              const void *aad, size_t aad_len, const void *ct,
                              size_t ct_len, unsigned char **plain,
                              size_t *plain_len, pt_error_t *err);

/* WeChat Pay v3 `resource` decryption: the strings of the notification as
 * given (APIv3 key, nonce, associated_data, base64 ciphertext), their bytes
 * used as is. Same results as pt_crypto_aes_gcm_decrypt. */
int pt_crypto_wechat_decrypt(const char *api_v3_key, const char *nonce,
                             const char *associated_data,
                             const char *ciphertext_b64, char **plain,
                             size_t *plain_len, pt_error_t *err);

/* ---- hashes and HMAC ---- */

#define PT_CRYPTO_HMAC_SHA256_HEX_LEN PT_CRYPTO_SHA256_HEX_LEN

/* SHA-256 of data as lowercase hex into hex (65 bytes, with the NUL);
 * data may be NULL when len is 0. */
void pt_crypto_sha256_hex(const void *data, size_t len,
                          char hex[PT_CRYPTO_SHA256_HEX_LEN + 1]);

/* HMAC-SHA256 of data under key as lowercase hex into hex (65 bytes, with
 * the NUL). key and data may be NULL when their lengths are 0. */
int pt_crypto_hmac_sha256_hex(const void *key, size_t key_len,
                              const void *data, size_t len,
                              char hex[PT_CRYPTO_HMAC_SHA256_HEX_LEN + 1],
                              pt_error_t *err);

/* ---- What the channels sign ---- */

/* One parameter, both NUL-terminated; either may be NULL (then dropped). */
typedef struct {
  const char *key;
  const char *value;
} pt_crypto_kv_t;

/* Flags of pt_crypto_alipay_string_to_sign. */
#define PT_CRYPTO_ALIPAY_DROP_SIGN_TYPE 0x1u /* verifying a notification */

/* Alipay's string to sign: drops `sign`, entries whose key or value is NULL,
 * empty or whitespace-only, and `sign_type` too when flags has
 * PT_CRYPTO_ALIPAY_DROP_SIGN_TYPE (async notifications; requests keep it);
 * sorts by key in byte order and joins `k=v&k=v` with raw values.
 * PT_EINVAL if a key appears twice. Nothing left gives "". */
int pt_crypto_alipay_string_to_sign(const pt_crypto_kv_t *params, size_t n,
                                    unsigned flags, char **out,
                                    size_t *out_len, pt_error_t *err);

/* WeChat Pay v3 request message: METHOD\nURL\nTIMESTAMP\nNONCE\nBODY\n, url
 * being the path plus ?query, body the exact bytes sent (NULL/0 for GET; the
 * final \n stays). PT_EINVAL if a header field is empty or holds a '\n'. */
int pt_crypto_wechat_request_message(const char *method, const char *url,
                                     const char *timestamp, const char *nonce,
                                     const char *body, size_t body_len,
                                     char **out, size_t *out_len,
                                     pt_error_t *err);

/* WeChat Pay v3 response and callback message: TIMESTAMP\nNONCE\nBODY\n from
 * the Wechatpay-Timestamp and Wechatpay-Nonce headers and the raw body. */
int pt_crypto_wechat_response_message(const char *timestamp, const char *nonce,
                                      const char *body, size_t body_len,
                                      char **out, size_t *out_len,
                                      pt_error_t *err);

/* ---- Added for the channel simulator (it plays Alipay and WeChat Pay) ---- */

/* Encrypts plain_len bytes of plain (may be NULL when plain_len is 0) with
 * AES-256-GCM (key_len 32) or AES-128-GCM (key_len 16), a 12-byte nonce and
 * aad (may be NULL when aad_len is 0). *ct gets the ciphertext followed by
 * its 16-byte tag (*ct_len = plain_len + 16), the form that
 * pt_crypto_aes_gcm_decrypt takes. PT_EINVAL for a bad key or nonce length. */
int pt_crypto_aes_gcm_encrypt(const void *key, size_t key_len,
                              const void *nonce, size_t nonce_len,
                              const void *aad, size_t aad_len,
                              const void *plain, size_t plain_len,
                              unsigned char **ct, size_t *ct_len,
                              pt_error_t *err);

/* The same with the nonce and aad as NUL-terminated strings (aad may be
 * NULL: none) and the result as base64(ciphertext || tag), for building
 * WeChat Pay notifications in tests and the simulator. */
int pt_crypto_aes_gcm_encrypt_b64(const void *key, size_t key_len,
                                  const char *nonce, const char *aad,
                                  const void *plain, size_t plain_len,
                                  char **ct_b64, size_t *b64_len,
                                  pt_error_t *err);

/* WeChat Pay v3 `resource` encryption, the inverse of
 * pt_crypto_wechat_decrypt: *ciphertext_b64 = base64(AES-256-GCM(APIv3 key,
 * nonce, associated_data, plain) || tag), the strings' bytes used as is
 * (associated_data may be NULL: none). */
int pt_crypto_wechat_encrypt(const char *api_v3_key, const char *nonce,
                             const char *associated_data, const void *plain,
                             size_t plain_len, char **ciphertext_b64,
                             size_t *b64_len, pt_error_t *err);

/* Fills buf with len bytes from OpenSSL's CSPRNG. */
int pt_crypto_random_bytes(void *buf, size_t len, pt_error_t *err);

/* Writes len random characters of [0-9A-Za-z] and a NUL to out (which holds
 * len + 1 bytes): WeChat Pay nonces and the like. */
int pt_crypto_random_alnum(char *out, size_t len, pt_error_t *err);

#endif
