/*-------------------------------------------------------------------------
 *
 * keys.h
 *	  The keys of personal data (keys.c): the master key outside the
 *	  database, each subject's key in es_subject_keys wrapped by it, and
 *	  AES-256-GCM sealing with a key.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_KEYS_H
#define ES_KEYS_H

#include "core/store.h"

#define ES_KEY_LEN		32		/* AES-256 */
#define ES_NONCE_LEN	12		/* GCM's */
#define ES_TAG_LEN		16
#define ES_SEAL_OVERHEAD (ES_NONCE_LEN + ES_TAG_LEN)

typedef enum EsSubjectKeyState
{
	ES_SUBJECT_KEY_FOUND,
	ES_SUBJECT_KEY_ABSENT,		/* never created */
	ES_SUBJECT_KEY_FORGOTTEN	/* destroyed by es_forget */
} EsSubjectKeyState;

extern void es_keys_init(void);
extern void es_require_master_key(void);
extern EsSubjectKeyState es_subject_key(EsStore *s, const char *subject, bool create, uint8 *key);

extern void es_seal(const uint8 *key, const char *aad, int aadlen, const char *plain, int len, char *out);
extern bool es_unseal(const uint8 *key, const char *aad, int aadlen, const char *sealed, int len, char *out);

#endif							/* ES_KEYS_H */
