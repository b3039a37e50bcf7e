/* Stack high-water mark: the stack region is painted at boot and scanned on request.
 * Both boards' linker scripts define __stack_start (lowest address) and __stack_end (initial SP);
 * the stack grows down from __stack_end.
 */
#ifndef NB_STACK_H
#define NB_STACK_H

#include <stdint.h>

/* Fill the unused part of the stack with a pattern; call once, early in main(). */
void nb_stack_paint(void);
/* Most stack bytes ever used since the paint. */
uint32_t nb_stack_high_water(void);
/* Size of the stack region. */
uint32_t nb_stack_size(void);

#endif /* NB_STACK_H */
