/*-------------------------------------------------------------------------
 *
 * event_hash.c
 *	  The hash that makes the history tamper-evident (README, "Tamper
 *	  evidence").
 *
 * Each event stores hash = SHA-256(encoding), where the encoding is the
 * domain tag "ultracore_es event v1", the hash of the aggregate's previous
 * event (32 zero bytes before version 1), then every other column of the
 * row in table order, each as a presence byte (0: NULL) and its value:
 * text as a 4-byte big-endian length and its bytes; bigint, xid8 and
 * timestamptz (microseconds) as 8 bytes big-endian; integer as 4; jsonb as
 * its text form, like text.  The text form of jsonb, not its binary one:
 * it is what a dump carries and a restore parses back, so a restored store
 * verifies, and it is defined by PostgreSQL's documentation rather than by
 * its storage format.
 *
 * The ledger (verify.c) chains these hashes once more, in commit order:
 * chain = SHA-256(previous chain || event hash).
 *
 * SHA-256 is OpenSSL's, through its EVP interface, with one context and
 * one fetched implementation kept for the backend's life.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "core/event_hash.h"

#include <openssl/evp.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "core/event.h"

static const char hash_domain[] = "ultracore_es event v1";

const uint8 es_hash_zero[ES_HASH_LEN];

static EVP_MD_CTX *hash_ctx;
static EVP_MD *sha256_md;		/* fetched once: an implicit fetch per hash costs more than the hash */

/* The kept context, initialized for a new SHA-256. */
static EVP_MD_CTX *
sha256_begin(void)
{
	if (hash_ctx == NULL && (hash_ctx = EVP_MD_CTX_new()) == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	if (sha256_md == NULL && (sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL)
		elog(ERROR, "OpenSSL has no SHA-256");
	if (EVP_DigestInit_ex(hash_ctx, sha256_md, NULL) != 1)
		elog(ERROR, "could not compute a SHA-256 hash");
	return hash_ctx;
}

/* es_sha256: SHA-256 of a followed by b (blen may be 0). */
void
es_sha256(const void *a, size_t alen, const void *b, size_t blen, uint8 *out)
{
	unsigned int len;

	if (EVP_DigestUpdate(sha256_begin(), a, alen) != 1 ||
		(blen > 0 && EVP_DigestUpdate(hash_ctx, b, blen) != 1) ||
		EVP_DigestFinal_ex(hash_ctx, out, &len) != 1 || len != ES_HASH_LEN)
		elog(ERROR, "could not compute a SHA-256 hash");
}

/*
 * es_sha256_file: SHA-256 of the file at path, read in blocks; its size
 * goes into *bytes.
 */
void
es_sha256_file(const char *path, uint8 *out, int64 *bytes)
{
	EVP_MD_CTX *ctx = sha256_begin();
	FILE	   *f = AllocateFile(path, PG_BINARY_R);
	char	   *block = palloc(BLCKSZ * 8);
	size_t		n;
	unsigned int len;

	if (f == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\" for reading: %m", path)));
	*bytes = 0;
	while ((n = fread(block, 1, BLCKSZ * 8, f)) > 0)
	{
		CHECK_FOR_INTERRUPTS();
		if (EVP_DigestUpdate(ctx, block, n) != 1)
			elog(ERROR, "could not compute a SHA-256 hash");
		*bytes += n;
	}
	if (ferror(f))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", path)));
	FreeFile(f);
	pfree(block);
	if (EVP_DigestFinal_ex(ctx, out, &len) != 1 || len != ES_HASH_LEN)
		elog(ERROR, "could not compute a SHA-256 hash");
}

static void
put_uint(StringInfo buf, uint64 v, int bytes)
{
	char		b[8];
	int			i;

	for (i = bytes - 1; i >= 0; i--, v >>= 8)
		b[i] = (char) (v & 0xff);
	appendBinaryStringInfo(buf, b, bytes);
}

static void
put_bytes(StringInfo buf, const char *p, int len)
{
	put_uint(buf, (uint64) len, 4);
	appendBinaryStringInfo(buf, p, len);
}

/* A jsonb's text form, like put_bytes, written in place (its length patched in after). */
static void
put_jsonb_text(StringInfo buf, Datum d)
{
	Jsonb	   *jb = DatumGetJsonbP(d);
	int			at = buf->len;
	uint64		len;
	int			i;

	appendBinaryStringInfo(buf, "\0\0\0\0", 4);
	(void) JsonbToCString(buf, &jb->root, VARSIZE(jb));
	len = buf->len - at - 4;
	for (i = 3; i >= 0; i--, len >>= 8)
		buf->data[at + i] = (char) (len & 0xff);
	if ((Pointer) jb != DatumGetPointer(d))
		pfree(jb);
}

/*
 * es_event_hash: the hash of the deformed es_events row (values, isnull;
 * the hash column itself is left out) chained to prev.
 */
void
es_event_hash(const Datum *values, const bool *isnull, const uint8 *prev, uint8 *out)
{
	StringInfoData buf;
	int			att;
	int			size = sizeof(hash_domain) + ES_HASH_LEN + 128;

	/* Room for it all at once: the text forms are about the size of the values. */
	for (att = 0; att < EV_HASH; att++)
		if (!isnull[att] && (att == EV_DATA || att == EV_METADATA || att <= EV_AGGREGATE_ID ||
							 att == EV_CAUSATION_ID || att == EV_CORRELATION_ID || att == EV_APPENDED_BY))
			size += VARSIZE_ANY(DatumGetPointer(values[att])) + 8;
	initStringInfo(&buf);
	enlargeStringInfo(&buf, size);
	appendBinaryStringInfo(&buf, hash_domain, sizeof(hash_domain));
	appendBinaryStringInfo(&buf, (const char *) prev, ES_HASH_LEN);
	for (att = 0; att < EV_HASH; att++)
	{
		Datum		v = values[att];

		appendStringInfoChar(&buf, isnull[att] ? 0 : 1);
		if (isnull[att])
			continue;
		switch (att)
		{
			case EV_VERSION:
			case EV_POSITION:
				put_uint(&buf, (uint64) DatumGetInt64(v), 8);
				break;
			case EV_TX_ID:
				put_uint(&buf, U64FromFullTransactionId(DatumGetFullTransactionId(v)), 8);
				break;
			case EV_OCCURRED_AT:
			case EV_RECORDED_AT:
				put_uint(&buf, (uint64) DatumGetTimestampTz(v), 8);
				break;
			case EV_SCHEMA_VERSION:
				put_uint(&buf, (uint32) DatumGetInt32(v), 4);
				break;
			case EV_DATA:
			case EV_METADATA:
				put_jsonb_text(&buf, v);
				break;
			default:
				{
					text	   *t = DatumGetTextPP(v);

					put_bytes(&buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
					if ((Pointer) t != DatumGetPointer(v))
						pfree(t);
				}
				break;
		}
	}
	es_sha256(buf.data, buf.len, NULL, 0, out);
	pfree(buf.data);
}

/* es_chain_hash: the ledger's next chain value, SHA-256(chain || link). */
void
es_chain_hash(const uint8 *chain, const uint8 *link, uint8 *out)
{
	es_sha256(chain, ES_HASH_LEN, link, ES_HASH_LEN, out);
}

/*
 * es_hash_of_datum: copy a stored hash (a bytea) into out; false when it is
 * NULL or not a hash's length.
 */
bool
es_hash_of_datum(Datum d, bool isnull, uint8 *out)
{
	bytea	   *b;

	if (isnull)
		return false;
	b = DatumGetByteaPP(d);
	if (VARSIZE_ANY_EXHDR(b) != ES_HASH_LEN)
		return false;
	memcpy(out, VARDATA_ANY(b), ES_HASH_LEN);
	return true;
}

/* es_hash_datum: a hash as a bytea Datum, palloc'd. */
Datum
es_hash_datum(const uint8 *hash)
{
	bytea	   *b = palloc(VARHDRSZ + ES_HASH_LEN);

	SET_VARSIZE(b, VARHDRSZ + ES_HASH_LEN);
	memcpy(VARDATA(b), hash, ES_HASH_LEN);
	return PointerGetDatum(b);
}
