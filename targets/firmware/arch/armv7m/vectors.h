/* Vector table layout shared by the Cortex-M7 boards: each board defines its table with
 * NB_SYSTEM_VECTORS followed by its device IRQs (all Default_Handler: the firmware polls). */
#ifndef NB_VECTORS_H
#define NB_VECTORS_H

#include <stdint.h>

typedef void (*nb_vector_t)(void);

extern uint32_t __stack_end[];

void Reset_Handler(void);
void NMI_Handler(void);
void HardFault_Handler(void);
void MemManage_Handler(void);
void BusFault_Handler(void);
void UsageFault_Handler(void);
void Default_Handler(void);

#define NB_SYSTEM_VECTORS                                                                        \
    (nb_vector_t)(uintptr_t)__stack_end, /* initial SP */                                         \
        Reset_Handler, NMI_Handler, HardFault_Handler, MemManage_Handler, BusFault_Handler,      \
        UsageFault_Handler, 0, 0, 0, 0, Default_Handler /* SVCall */,                             \
        Default_Handler /* DebugMonitor */, 0, Default_Handler /* PendSV */,                      \
        Default_Handler /* SysTick */

#endif /* NB_VECTORS_H */
