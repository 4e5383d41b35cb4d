/* Money as the channels write it. paytask holds amounts as integer minor
 * units (fen for CNY); Alipay writes yuan as decimal strings with two
 * decimals ("12.34"). The conversions are exact: no floating point. */
#ifndef PT_AMOUNT_H
#define PT_AMOUNT_H

#include <stddef.h>
#include <stdint.h>

/* Longest yuan string of an int64 amount, with its NUL:
 * "92233720368547758.07". */
#define PT_AMOUNT_YUAN_MAX 24

/* Writes fen as yuan with exactly two decimals ("0.01", "100.00") into buf.
 * Returns 0, or PT_EINVAL when fen is negative or buf is too small (buf then
 * holds ""). */
int pt_amount_to_yuan(int64_t fen, char *buf, size_t len);

/* Parses len bytes of yuan text into fen. Accepts digits with at most two
 * decimals ("12", "12.3", "12.34"); refuses a sign, leading zeros ("012"),
 * a bare or trailing point (".5", "12."), more than two decimals, spaces,
 * anything else and amounts beyond int64. Returns 0 or PT_EINVAL (*fen is
 * then -1). */
int pt_amount_from_yuan(const char *s, size_t len, int64_t *fen);

#endif
