/* Firmware entry: bring the board up, paint the stack, announce the image, serve the protocol. */
#include "nb_hal.h"
#include "nb_protocol.h"
#include "nb_stack.h"

int main(void)
{
    hal_init();
    nb_stack_paint();
    nb_protocol_boot();
    nb_protocol_serve();
}
