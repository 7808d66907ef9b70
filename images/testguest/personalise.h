/* mode=personalise: the guest side of coinop's personalisation channel. */
#ifndef PERSONALISE_H
#define PERSONALISE_H
#include "io.h"
void personalise(long delay_ms);
#endif
