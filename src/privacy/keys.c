/*-------------------------------------------------------------------------
 *
 * keys.c
 *	  The keys that make personal data forgettable (crypto-shredding).
 *
 * Each data subject has a key of its own, 32 random bytes, which seals
 * (AES-256-GCM) that subject's personal fields.  The keys live in
 * es_subject_keys, each wrapped (sealed) by the master key; es_forget
 * destroys one, and what it sealed can never be read again.  The master key
 * stays outside the database: it is derived (SHA-256) from the file that the
 * superuser-only setting ultracore_es.master_key_file names, which only the
 * server's user may read.  During a rotation,
 * ultracore_es.previous_master_key_file names the old one, and
 * es_rewrap_subject_keys() wraps every key again with the new one.  Each
 * wrapped key records the id of the master key that wrapped it.
 *
 * Subject keys are cached per backend, unwrapped.  The cache is emptied
 * when es_subject_keys changes anywhere (a trigger sends an invalidation on
 * UPDATE and DELETE: a forgotten key leaves every backend at its next
 * transaction) and when a (sub)transaction aborts (a key it created is gone).
 *
 * AES-256-GCM is OpenSSL's, through its EVP interface; nonces are 12 random
 * bytes from pg_strong_random (random_nonce).  A sealed value is nonce ||
 * ciphertext || tag.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "privacy/keys.h"

#include <sys/stat.h>
#include <openssl/evp.h>

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "core/errors.h"
#include "core/event.h"
#include "core/event_hash.h"
#include "core/guc.h"
#include "core/validate.h"

#define MASTER_KEY_MAX_FILE 4096
#define MASTER_KEY_ID_LEN	16	/* hex digits */

typedef struct MasterKey
{
	char		path[MAXPGPATH];	/* "" until loaded */
	ino_t		ino;
	time_t		mtime;
	off_t		size;
	uint8		key[ES_KEY_LEN];
	char		id[MASTER_KEY_ID_LEN + 1];
} MasterKey;

static MasterKey current_key;
static MasterKey previous_key;

typedef struct SubjectKeyEntry
{
	char		subject[ES_MAX_ID_LEN + 1];
	EsSubjectKeyState state;
	uint8		key[ES_KEY_LEN];
} SubjectKeyEntry;

static HTAB *subject_keys = NULL;
static bool subject_keys_stale = false;

static EsPlan create_plan = {
	"INSERT INTO @extschema@.es_subject_keys (subject_id, wrapped_key, master_key_id, created_at)"
	" VALUES ($1, $2, $3, pg_catalog.now())"
	" ON CONFLICT (subject_id) DO NOTHING",
	3, {TEXTOID, BYTEAOID, TEXTOID}
};

static void
keys_forget_cache(void)
{
	if (subject_keys != NULL)
	{
		HASH_SEQ_STATUS seq;
		SubjectKeyEntry *e;

		/* Leave no unwrapped key behind in freed memory. */
		hash_seq_init(&seq, subject_keys);
		while ((e = hash_seq_search(&seq)) != NULL)
			explicit_bzero(e->key, ES_KEY_LEN);
		hash_destroy(subject_keys);
		subject_keys = NULL;
	}
	subject_keys_stale = false;
}

static void
keys_store_changed(const EsStore *store, Oid relid)
{
	if (relid == InvalidOid || relid == store->subject_keys_relid)
		subject_keys_stale = true;
}

static void
keys_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		subject_keys_stale = true;
}

static void
keys_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		subject_keys_stale = true;
}

/* es_keys_init: from _PG_init. */
void
es_keys_init(void)
{
	es_store_on_change(keys_store_changed);
	RegisterXactCallback(keys_xact_callback, NULL);
	RegisterSubXactCallback(keys_subxact_callback, NULL);
}

/*
 * Load the master key from path (the value of setting) when the file is new
 * or changed since the last load.  False when the setting is empty.
 */
static bool
master_key_load(MasterKey *mk, const char *path, const char *setting)
{
	struct stat st;
	char		buf[MASTER_KEY_MAX_FILE + 1];
	FILE	   *f;
	size_t		len;
	uint8		id[ES_HASH_LEN];
	static const char derive[] = "ultracore_es master key v1";
	static const char identify[] = "ultracore_es master key id v1";

	if (path == NULL || path[0] == '\0')
		return false;
	if (stat(path, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read the master key file \"%s\" named by %s: %m", path, setting)));
	if (strcmp(mk->path, path) == 0 && mk->ino == st.st_ino && mk->mtime == st.st_mtime &&
		mk->size == st.st_size)
		return true;
	if (!S_ISREG(st.st_mode))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("master key file \"%s\" is not a regular file", path)));
	if (st.st_mode & (S_IRWXG | S_IRWXO))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("master key file \"%s\" has group or world access", path),
				 errdetail("The master key must be readable by the server's user only."),
				 errhint("chmod 0600 the file, owned by the user the server runs as.")));
	if ((f = AllocateFile(path, "rb")) == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open the master key file \"%s\": %m", path)));
	len = fread(buf, 1, sizeof(buf), f);
	FreeFile(f);
	if (len < ES_KEY_LEN || len > MASTER_KEY_MAX_FILE)
	{
		explicit_bzero(buf, sizeof(buf));
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("master key file \"%s\" holds %zu bytes", path, len),
				 errdetail("It must hold from %d to %d bytes of random key material.",
						   ES_KEY_LEN, MASTER_KEY_MAX_FILE),
				 errhint("Make one with: head -c 32 /dev/urandom > \"%s\"", path)));
	}
	es_sha256(derive, sizeof(derive), buf, len, mk->key);
	explicit_bzero(buf, sizeof(buf));
	es_sha256(identify, sizeof(identify), mk->key, ES_KEY_LEN, id);
	hex_encode((const char *) id, MASTER_KEY_ID_LEN / 2, mk->id);
	mk->id[MASTER_KEY_ID_LEN] = '\0';
	strlcpy(mk->path, path, sizeof(mk->path));
	mk->ino = st.st_ino;
	mk->mtime = st.st_mtime;
	mk->size = st.st_size;
	return true;
}

/*
 * es_require_master_key: the current master key, loaded; an error that
 * says how to set one up when there is none.
 */
void
es_require_master_key(void)
{
	if (!master_key_load(&current_key, es_master_key_file, "ultracore_es.master_key_file"))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("personal data needs a master key, and ultracore_es.master_key_file is not set"),
				 errdetail("Personal fields are sealed with keys of their subjects, which the master key wraps; it stays outside the database."),
				 errhint("As the server's user: head -c 32 /dev/urandom > key; chmod 0600 key; then set ultracore_es.master_key_file to its path and reload.")));
}

/* The master key whose id is id: the current one, or the previous one. */
static const MasterKey *
master_key_of(const char *id, const char *subject)
{
	if (master_key_load(&current_key, es_master_key_file, "ultracore_es.master_key_file") &&
		strcmp(current_key.id, id) == 0)
		return &current_key;
	if (master_key_load(&previous_key, es_previous_master_key_file, "ultracore_es.previous_master_key_file") &&
		strcmp(previous_key.id, id) == 0)
		return &previous_key;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the key of data subject \"%s\" is wrapped by master key %s, which is not configured", subject, id),
			 errhint("Set ultracore_es.master_key_file (or, during a rotation, ultracore_es.previous_master_key_file) to that key's file and reload.")));
	return NULL;				/* keep compiler quiet */
}

/*
 * One cipher context and one fetched AES-256-GCM for the backend's life:
 * each seal initializes the context anew (key and nonce), without the
 * implicit fetch EVP_aes_256_gcm() costs every time.  GCM's default nonce
 * length is ES_NONCE_LEN.
 */
static EVP_CIPHER_CTX *
cipher_ctx(const EVP_CIPHER **cipher)
{
	static EVP_CIPHER_CTX *ctx = NULL;
	static EVP_CIPHER *gcm = NULL;

	if (ctx == NULL && (ctx = EVP_CIPHER_CTX_new()) == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	if (gcm == NULL && (gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL)) == NULL)
		elog(ERROR, "OpenSSL has no AES-256-GCM");
	*cipher = gcm;
	return ctx;
}

/*
 * A nonce: 12 random bytes (GCM's own size, random as NIST SP 800-38D
 * allows), taken from a buffer that pg_strong_random refills 4 kB at a time
 * rather than asked for each one.  The buffer is filled in the backend
 * itself, never inherited across fork().
 */
static void
random_nonce(char *nonce)
{
	static char pool[4096];
	static int	left = 0;

	if (left < ES_NONCE_LEN)
	{
		if (!pg_strong_random(pool, sizeof(pool)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random nonce")));
		left = sizeof(pool);
	}
	left -= ES_NONCE_LEN;
	memcpy(nonce, pool + left, ES_NONCE_LEN);
	explicit_bzero(pool + left, ES_NONCE_LEN);	/* never used twice */
}

/*
 * es_seal: AES-256-GCM of plain (len bytes) with key, authenticating aad;
 * out gets len + ES_SEAL_OVERHEAD bytes: nonce, ciphertext, tag.
 */
void
es_seal(const uint8 *key, const char *aad, int aadlen, const char *plain, int len, char *out)
{
	const EVP_CIPHER *gcm;
	EVP_CIPHER_CTX *ctx = cipher_ctx(&gcm);
	int			n;
	bool		ok;

	random_nonce(out);
	ok = EVP_EncryptInit_ex(ctx, gcm, NULL, key, (const unsigned char *) out) == 1 &&
		EVP_EncryptUpdate(ctx, NULL, &n, (const unsigned char *) aad, aadlen) == 1 &&
		EVP_EncryptUpdate(ctx, (unsigned char *) out + ES_NONCE_LEN, &n,
						  (const unsigned char *) plain, len) == 1 &&
		EVP_EncryptFinal_ex(ctx, (unsigned char *) out + ES_NONCE_LEN + n, &n) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ES_TAG_LEN, out + ES_NONCE_LEN + len) == 1;
	if (!ok)
		elog(ERROR, "AES-256-GCM encryption failed");
}

/*
 * es_unseal: the reverse of es_seal (len includes the overhead); false when
 * the value does not authenticate with key and aad.
 */
bool
es_unseal(const uint8 *key, const char *aad, int aadlen, const char *sealed, int len, char *out)
{
	const EVP_CIPHER *gcm;
	EVP_CIPHER_CTX *ctx;
	int			n;
	int			plen = len - ES_SEAL_OVERHEAD;
	bool		ok;

	if (plen < 0)
		return false;
	ctx = cipher_ctx(&gcm);
	ok = EVP_DecryptInit_ex(ctx, gcm, NULL, key, (const unsigned char *) sealed) == 1 &&
		EVP_DecryptUpdate(ctx, NULL, &n, (const unsigned char *) aad, aadlen) == 1 &&
		EVP_DecryptUpdate(ctx, (unsigned char *) out, &n,
						  (const unsigned char *) sealed + ES_NONCE_LEN, plen) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ES_TAG_LEN,
							(void *) (sealed + ES_NONCE_LEN + plen)) == 1 &&
		EVP_DecryptFinal_ex(ctx, (unsigned char *) out + n, &n) == 1;
	return ok;
}

/* The cache entry of subject, looked up or entered (state ABSENT when new). */
static SubjectKeyEntry *
keys_cache_entry(const char *subject, bool *found)
{
	if (subject_keys_stale)
		keys_forget_cache();
	if (subject_keys == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = ES_MAX_ID_LEN + 1;
		ctl.entrysize = sizeof(SubjectKeyEntry);
		ctl.hcxt = TopMemoryContext;
		subject_keys = hash_create("ultracore_es subject keys", 256, &ctl,
								   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	return hash_search(subject_keys, subject, HASH_ENTER, found);
}

/* Columns of es_subject_keys read here, in the order of the update script. */
#define Anum_keys_subject_id	1
#define Anum_keys_wrapped_key	2
#define Anum_keys_master_key_id 3

/*
 * The stored key of subject: false when there is none; *wrapped NULL when
 * it was forgotten.  A probe of the primary key with the latest snapshot, as
 * the aggregate's row is read (aggregate.c): a key is a fact that only ever
 * goes from made to destroyed, so the newest state is the one to use, and
 * this is on every append's and read's path (a query costs several times
 * more).
 */
static bool
keys_fetch(EsStore *s, const char *subject, bytea **wrapped, char **id)
{
	Relation	rel = table_open(s->subject_keys_relid, AccessShareLock);
	Relation	idx = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	ScanKeyData key;
	IndexScanDesc scan;
	bool		found;

	ScanKeyInit(&key, Anum_keys_subject_id, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(subject));
	key.sk_collation = C_COLLATION_OID;
	scan = index_beginscan(rel, idx, snap, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	if (found)
	{
		slot_getsomeattrs(slot, Anum_keys_master_key_id);
		*wrapped = slot->tts_isnull[Anum_keys_wrapped_key - 1] ? NULL
			: DatumGetByteaPCopy(slot->tts_values[Anum_keys_wrapped_key - 1]);
		*id = slot->tts_isnull[Anum_keys_master_key_id - 1] ? NULL
			: TextDatumGetCString(slot->tts_values[Anum_keys_master_key_id - 1]);
	}
	index_endscan(scan);
	UnregisterSnapshot(snap);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, NoLock);
	table_close(rel, NoLock);
	return found;
}

/* Unwrap a stored subject key (NULL: forgotten) with the master key id names. */
static EsSubjectKeyState
keys_unwrap(bytea *wrapped, const char *id, const char *subject, uint8 *key)
{
	if (wrapped == NULL)
		return ES_SUBJECT_KEY_FORGOTTEN;
	if (id == NULL || VARSIZE_ANY_EXHDR(wrapped) != ES_KEY_LEN + ES_SEAL_OVERHEAD ||
		!es_unseal(master_key_of(id, subject)->key, subject, strlen(subject),
				   VARDATA_ANY(wrapped), VARSIZE_ANY_EXHDR(wrapped), (char *) key))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the key of data subject \"%s\" does not unwrap with master key %s", subject,
						id ? id : "(none)"),
				 errdetail("The wrapped key was changed, or the master key file's content is not the one that wrapped it.")));
	return ES_SUBJECT_KEY_FOUND;
}

/*
 * es_subject_key: the key of subject into key (ES_SUBJECT_KEY_FOUND), or
 * why there is none.  With create, a subject without a key gets one.
 * Needs SPI (to create one), as the store's owner.
 */
EsSubjectKeyState
es_subject_key(EsStore *s, const char *subject, bool create, uint8 *key)
{
	SubjectKeyEntry *e;
	bool		found;
	bytea	   *wrapped;
	char	   *id;
	EsSubjectKeyState state;

	if (!OidIsValid(s->subject_keys_relid))
		return ES_SUBJECT_KEY_ABSENT;
	if (strlen(subject) > ES_MAX_ID_LEN)
		es_check_id(subject, "subject id");		/* raises the error */
	e = keys_cache_entry(subject, &found);
	if (found)
	{
		memcpy(key, e->key, ES_KEY_LEN);
		return e->state;
	}
	/* Not cached until known: an error below leaves no half-made entry. */
	hash_search(subject_keys, subject, HASH_REMOVE, NULL);

	if (keys_fetch(s, subject, &wrapped, &id))
		state = keys_unwrap(wrapped, id, subject, key);
	else if (!create)
		state = ES_SUBJECT_KEY_ABSENT;
	else
	{
		Datum		args[3];
		bytea	   *made = palloc(VARHDRSZ + ES_KEY_LEN + ES_SEAL_OVERHEAD);

		es_check_id(subject, "subject id");
		es_require_master_key();
		if (!pg_strong_random(key, ES_KEY_LEN))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random key")));
		SET_VARSIZE(made, VARHDRSZ + ES_KEY_LEN + ES_SEAL_OVERHEAD);
		es_seal(current_key.key, subject, strlen(subject), (const char *) key, ES_KEY_LEN, VARDATA(made));
		args[0] = CStringGetTextDatum(subject);
		args[1] = PointerGetDatum(made);
		args[2] = CStringGetTextDatum(current_key.id);
		if (SPI_execute_plan(es_plan(&create_plan), args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not store the key of data subject \"%s\"", subject);
		if (SPI_processed == 1)
			state = ES_SUBJECT_KEY_FOUND;
		else if (keys_fetch(s, subject, &wrapped, &id))
			/* a concurrent append made it first, and committed */
			state = keys_unwrap(wrapped, id, subject, key);
		else
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent update"),
					 errdetail("The key of data subject \"%s\" was made by a concurrent transaction.", subject),
					 errhint("Retry the transaction.")));
	}
	if (state != ES_SUBJECT_KEY_ABSENT)
	{
		e = keys_cache_entry(subject, &found);
		e->state = state;
		memcpy(e->key, key, ES_KEY_LEN);
	}
	return state;
}

static EsPlan forget_plan = {
	"INSERT INTO @extschema@.es_subject_keys AS k (subject_id, wrapped_key, master_key_id, created_at, forgotten_at)"
	" VALUES ($1, NULL, NULL, pg_catalog.now(), pg_catalog.now())"
	" ON CONFLICT (subject_id) DO UPDATE SET wrapped_key = NULL, master_key_id = NULL,"
	"     forgotten_at = pg_catalog.now()"
	"  WHERE k.wrapped_key IS NOT NULL"
	" RETURNING k.created_at OPERATOR(pg_catalog.<) k.forgotten_at",
	1, {TEXTOID}
};

/*
 * es_forget(subject_id) returns boolean
 *
 * Destroy the key of a data subject: everything sealed with it reads as
 * JSON null from now on, and appends of the subject's personal data are
 * refused.  True when a key was destroyed; false when the subject had none
 * (it is marked forgotten all the same) or was forgotten before.
 */
PG_FUNCTION_INFO_V1(es_forget);
Datum
es_forget(PG_FUNCTION_ARGS)
{
	char	   *subject = es_arg_id(fcinfo, 0, "subject_id", true);
	EsCall		call;
	Datum		arg;
	bool		destroyed = false;

	PreventCommandIfReadOnly("es_forget()");
	es_call_begin(fcinfo, &call);
	if (!OidIsValid(call.store->subject_keys_relid))
		elog(ERROR, "es_subject_keys does not exist: update the extension");
	arg = CStringGetTextDatum(subject);
	if (SPI_execute_plan(es_plan(&forget_plan), &arg, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not forget data subject \"%s\"", subject);
	if (SPI_processed == 1)
	{
		bool		isnull;

		destroyed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	es_call_end(&call);
	PG_RETURN_BOOL(destroyed);
}

static EsPlan rewrap_list_plan = {
	"SELECT k.subject_id, k.wrapped_key, k.master_key_id FROM @extschema@.es_subject_keys k"
	" WHERE k.wrapped_key IS NOT NULL AND k.master_key_id OPERATOR(pg_catalog.<>) $1"
	" ORDER BY k.subject_id FOR UPDATE",
	1, {TEXTOID}
};

static EsPlan rewrap_plan = {
	"UPDATE @extschema@.es_subject_keys SET wrapped_key = $2, master_key_id = $3"
	" WHERE subject_id OPERATOR(pg_catalog.=) $1",
	3, {TEXTOID, BYTEAOID, TEXTOID}
};

/*
 * es_rewrap_subject_keys() returns bigint
 *
 * The master key rotation's second step: wrap every subject key that the
 * previous master key wrapped with the current one.  Returns how many.
 */
PG_FUNCTION_INFO_V1(es_rewrap_subject_keys);
Datum
es_rewrap_subject_keys(PG_FUNCTION_ARGS)
{
	EsCall		call;
	Datum		arg;
	SPITupleTable *keys;
	uint64		n;
	uint64		i;

	PreventCommandIfReadOnly("es_rewrap_subject_keys()");
	es_call_begin(fcinfo, &call);
	if (!OidIsValid(call.store->subject_keys_relid))
		elog(ERROR, "es_subject_keys does not exist: update the extension");
	es_require_master_key();
	arg = CStringGetTextDatum(current_key.id);
	if (SPI_execute_plan(es_plan(&rewrap_list_plan), &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read es_subject_keys");
	keys = SPI_tuptable;
	n = SPI_processed;
	for (i = 0; i < n; i++)
	{
		char	   *subject = SPI_getvalue(keys->vals[i], keys->tupdesc, 1);
		HeapTuple	row = keys->vals[i];
		uint8		key[ES_KEY_LEN];
		bytea	   *wrapped = palloc(VARHDRSZ + ES_KEY_LEN + ES_SEAL_OVERHEAD);
		Datum		args[3];
		bool		isnull;
		Datum		w = SPI_getbinval(row, keys->tupdesc, 2, &isnull);
		char	   *id = SPI_getvalue(row, keys->tupdesc, 3);
		bytea	   *old = DatumGetByteaPP(w);

		CHECK_FOR_INTERRUPTS();
		if (VARSIZE_ANY_EXHDR(old) != ES_KEY_LEN + ES_SEAL_OVERHEAD ||
			!es_unseal(master_key_of(id, subject)->key, subject, strlen(subject),
					   VARDATA_ANY(old), VARSIZE_ANY_EXHDR(old), (char *) key))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("the key of data subject \"%s\" does not unwrap with master key %s", subject, id)));
		SET_VARSIZE(wrapped, VARHDRSZ + ES_KEY_LEN + ES_SEAL_OVERHEAD);
		es_seal(current_key.key, subject, strlen(subject), (const char *) key, ES_KEY_LEN, VARDATA(wrapped));
		explicit_bzero(key, ES_KEY_LEN);
		args[0] = CStringGetTextDatum(subject);
		args[1] = PointerGetDatum(wrapped);
		args[2] = CStringGetTextDatum(current_key.id);
		if (SPI_execute_plan(es_plan(&rewrap_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not rewrap the key of data subject \"%s\"", subject);
	}
	es_call_end(&call);
	PG_RETURN_INT64((int64) n);
}
