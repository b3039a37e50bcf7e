#include "nb_fmt.h"

static const char nb_hex_chars[] = "0123456789abcdef";

size_t nb_fmt_u32(char *buf, uint32_t v)
{
    char tmp[10];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v != 0u);
    for (size_t i = 0; i < n; i++) {
        buf[i] = tmp[n - 1 - i];
    }
    return n;
}

size_t nb_fmt_i32(char *buf, int32_t v)
{
    if (v < 0) {
        buf[0] = '-';
        return 1 + nb_fmt_u32(buf + 1, 0u - (uint32_t)v);
    }
    return nb_fmt_u32(buf, (uint32_t)v);
}

void nb_fmt_hex32(char *buf, uint32_t v)
{
    for (int i = 7; i >= 0; i--) {
        buf[i] = nb_hex_chars[v & 15u];
        v >>= 4;
    }
}

void nb_fmt_hex_bytes(char *buf, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        buf[2 * i] = nb_hex_chars[data[i] >> 4];
        buf[2 * i + 1] = nb_hex_chars[data[i] & 15u];
    }
}

int nb_hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int nb_parse_u32(const char *s, size_t len, uint32_t *out)
{
    if (len == 0 || len > 10) {
        return 0;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
        v = v * 10u + (uint64_t)(s[i] - '0');
    }
    if (v > 0xFFFFFFFFull) {
        return 0;
    }
    *out = (uint32_t)v;
    return 1;
}

int nb_parse_hex32(const char *s, size_t len, uint32_t *out)
{
    if (len != 8) {
        return 0;
    }
    uint32_t v = 0;
    for (size_t i = 0; i < 8; i++) {
        const int d = nb_hex_digit(s[i]);
        if (d < 0) {
            return 0;
        }
        v = (v << 4) | (uint32_t)d;
    }
    *out = v;
    return 1;
}
