/*-------------------------------------------------------------------------
 *
 * sequencer.h
 *	  The commit log: the sequencer service (sequencer.c), which numbers
 *	  what the output plugin (decoder.c) decodes.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_SEQUENCER_H
#define ES_SEQUENCER_H

extern void es_sequencer_init(void);
extern void es_sequencer_drop_slot(void);

#endif							/* ES_SEQUENCER_H */
