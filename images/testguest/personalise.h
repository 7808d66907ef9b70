/* mode=personalise: the guest side of coinop's personalisation channel. */
#ifndef PERSONALISE_H
#define PERSONALISE_H
#include "io.h"
/* `ready`: whether to write 123 after the line (0: a guest stuck after its line). */
void personalise(long delay_ms, int ready);
/* The doorbell guest: `heed` whether it answers a ring (0: its listener seems hung). */
void personalise_doorbell(int heed);
#endif
