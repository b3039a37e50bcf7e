/* Tiny integer/hex formatting and parsing for the UART protocol (no printf, no allocation). */
#ifndef NB_FMT_H
#define NB_FMT_H

#include <stddef.h>
#include <stdint.h>

/* Decimal digits of v into buf (at least 10 bytes, not terminated); returns the count. */
size_t nb_fmt_u32(char *buf, uint32_t v);
/* Decimal with a leading '-' for negative values (at least 11 bytes); returns the count. */
size_t nb_fmt_i32(char *buf, int32_t v);
/* Exactly 8 lowercase hex digits. */
void nb_fmt_hex32(char *buf, uint32_t v);
/* Two lowercase hex digits per byte. */
void nb_fmt_hex_bytes(char *buf, const uint8_t *data, size_t len);

/* Value of one hex digit (either case), or -1. */
int nb_hex_digit(char c);
/* A whole token of 1..10 decimal digits that fits in uint32; returns 1 on success. */
int nb_parse_u32(const char *s, size_t len, uint32_t *out);
/* A whole token of exactly 8 hex digits; returns 1 on success. */
int nb_parse_hex32(const char *s, size_t len, uint32_t *out);

#endif /* NB_FMT_H */
