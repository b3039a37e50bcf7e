/* CRC-32/ISO-HDLC, the CRC of zlib.crc32 and of the UART protocol's frames (docs/protocol.md). */
#ifndef NB_CRC32_H
#define NB_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* zlib's convention: start with crc = 0, feed pieces in order, the result is the final CRC. */
uint32_t nb_crc32(uint32_t crc, const void *data, size_t len);

#endif /* NB_CRC32_H */
