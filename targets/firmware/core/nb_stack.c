#include "nb_stack.h"

#include <stddef.h>

#define NB_STACK_PAINT 0xA5A5A5A5u
#define NB_STACK_MARGIN 64u /* bytes below the current frame left alone while painting */

extern uint32_t __stack_start[];
extern uint32_t __stack_end[];

/* noinline: the frame of this function is where painting stops */
__attribute__((noinline)) void nb_stack_paint(void)
{
    volatile uint32_t here = 0;
    const uintptr_t limit = ((uintptr_t)&here - NB_STACK_MARGIN) & ~(uintptr_t)3u;
    for (volatile uint32_t *p = __stack_start; (uintptr_t)p < limit; p++) {
        *p = NB_STACK_PAINT;
    }
    (void)here;
}

uint32_t nb_stack_high_water(void)
{
    const volatile uint32_t *p = __stack_start;
    while (p < __stack_end && *p == NB_STACK_PAINT) {
        p++;
    }
    return (uint32_t)((uintptr_t)__stack_end - (uintptr_t)p);
}

uint32_t nb_stack_size(void)
{
    return (uint32_t)((uintptr_t)__stack_end - (uintptr_t)__stack_start);
}
