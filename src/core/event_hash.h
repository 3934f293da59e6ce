/*-------------------------------------------------------------------------
 *
 * event_hash.h
 *	  The hash of an event, over a canonical encoding of everything stored
 *	  for it and chained to its aggregate's previous event (event_hash.c);
 *	  the write path stores it, es_verify recomputes it.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_EVENT_HASH_H
#define ES_EVENT_HASH_H

#define ES_HASH_LEN 32			/* SHA-256 */

/* The link before an aggregate's first event (and before events stored by 1.0). */
extern const uint8 es_hash_zero[ES_HASH_LEN];

extern void es_sha256(const void *a, size_t alen, const void *b, size_t blen, uint8 *out);
extern void es_sha256_file(const char *path, uint8 *out, int64 *bytes);
extern void es_event_hash(const Datum *values, const bool *isnull, const uint8 *prev, uint8 *out);
extern void es_chain_hash(const uint8 *chain, const uint8 *link, uint8 *out);
extern bool es_hash_of_datum(Datum d, bool isnull, uint8 *out);
extern Datum es_hash_datum(const uint8 *hash);

#endif							/* ES_EVENT_HASH_H */
