/*-------------------------------------------------------------------------
 *
 * personal_data.c
 *	  Personal data that can be forgotten: the registry of personal fields
 *	  (es_personal_data), their sealing on append, their revealing on read,
 *	  and the sealed snapshots of states folded from them.
 *
 * es_register_personal_data names top-level fields of an event type's data
 * as personal data of a subject: the aggregate, or the id in another field.
 * The append replaces each such field's value by an envelope, a JSON string
 *
 *		es1:<base64 subject id>:<base64 nonce || AES-256-GCM(JSON text) || tag>
 *
 * sealed with the subject's key (keys.c), and records in the event's
 * metadata which fields it sealed and whose: "personal_data": {"subject":
 * ..., "fields": [...]}.  The plaintext never reaches a table or the WAL.
 * An envelope names its subject, so a read model that stores it as it is
 * can reveal it at read time (es_reveal, in the read-model views).
 *
 * Reads reveal (es_read_rows, for callers that may read the events): each
 * listed field gets its value back, or JSON null once its subject was
 * forgotten.  The hash of an event (event_hash.c) covers what is stored,
 * the envelopes: forgetting changes nothing stored, and es_verify passes.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "privacy/personal_data.h"

#include "catalog/pg_type.h"
#include "common/base64.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "core/event.h"
#include "core/event_hash.h"
#include "core/validate.h"
#include "privacy/keys.h"

#define ENVELOPE_PREFIX			"es1:"
#define STATE_PREFIX			"es1s:"

typedef struct PersonalType
{
	char		event_type[ES_MAX_NAME_LEN + 1];
	int			nfields;
	char	  **fields;
	char	   *subject_field;	/* NULL: the aggregate id */
} PersonalType;

static MemoryContext registry_cxt = NULL;
static HTAB *registry = NULL;
static bool registry_stale = true;

static EsPlan registry_plan = {
	"SELECT p.event_type, p.fields, p.subject_field FROM @extschema@.es_personal_data p",
	0, {0}
};

static void
personal_store_changed(const EsStore *store, Oid relid)
{
	if (relid == InvalidOid || relid == store->personal_data_relid)
		registry_stale = true;
}

/* es_personal_data_init: from _PG_init. */
void
es_personal_data_init(void)
{
	es_store_on_change(personal_store_changed);
}

/* The registry, read again when es_personal_data changed.  Needs SPI. */
static void
registry_refresh(EsStore *s)
{
	HASHCTL		ctl;
	uint64		i;

	if (!registry_stale)
		return;
	if (registry_cxt == NULL)
		registry_cxt = AllocSetContextCreate(TopMemoryContext, "ultracore_es personal data",
											 ALLOCSET_SMALL_SIZES);
	MemoryContextReset(registry_cxt);
	registry = NULL;
	ctl.keysize = ES_MAX_NAME_LEN + 1;
	ctl.entrysize = sizeof(PersonalType);
	ctl.hcxt = registry_cxt;
	registry = hash_create("ultracore_es personal data", 16, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	if (OidIsValid(s->personal_data_relid))
	{
		if (SPI_execute_plan(es_plan(&registry_plan), NULL, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read es_personal_data");
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple	row = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			char	   *event_type = SPI_getvalue(row, desc, 1);
			bool		isnull;
			Datum	   *elems;
			int			n;
			int			j;
			PersonalType *t;
			MemoryContext old;

			if (strlen(event_type) > ES_MAX_NAME_LEN)
				continue;
			t = hash_search(registry, event_type, HASH_ENTER, NULL);
			deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(row, desc, 2, &isnull)),
							  TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &n);
			old = MemoryContextSwitchTo(registry_cxt);
			t->nfields = n;
			t->fields = palloc(sizeof(char *) * Max(n, 1));
			for (j = 0; j < n; j++)
				t->fields[j] = TextDatumGetCString(elems[j]);
			t->subject_field = SPI_getvalue(row, desc, 3);
			if (t->subject_field)
				t->subject_field = pstrdup(t->subject_field);
			MemoryContextSwitchTo(old);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	registry_stale = false;
}

/* The JSON text of a value (a scalar, or a container as jbvBinary). */
static char *
json_text_of(JsonbValue *v)
{
	Jsonb	   *jb;

	if (v->type == jbvBinary)
		return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
	jb = JsonbValueToJsonb(v);
	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

/* The value of a JSON text, as a JsonbValue (a container as jbvBinary). */
static JsonbValue *
json_value_of(const char *text)
{
	Jsonb	   *jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
	JsonbValue *v = palloc(sizeof(JsonbValue));

	if (JB_ROOT_IS_SCALAR(jb))
		JsonbExtractScalar(&jb->root, v);
	else
	{
		v->type = jbvBinary;
		v->val.binary.data = &jb->root;
		v->val.binary.len = VARSIZE(jb);
	}
	return v;
}

static char *
base64_of(const char *p, int len)
{
	char	   *out = palloc(pg_b64_enc_len(len) + 1);
	int			n = pg_b64_encode(p, len, out, pg_b64_enc_len(len));

	if (n < 0)
		elog(ERROR, "could not encode base64");
	out[n] = '\0';
	return out;
}

/* Decode base64 text of len bytes; NULL when it is not base64. */
static char *
bytes_of_base64(const char *text, int len, int *outlen)
{
	char	   *out = palloc(pg_b64_dec_len(len) + 1);

	*outlen = pg_b64_decode(text, len, out, pg_b64_dec_len(len));
	if (*outlen < 0)
		return NULL;
	out[*outlen] = '\0';
	return out;
}

/* The envelope of a value sealed with the key of subject. */
static char *
envelope_of(const uint8 *key, const char *subject, JsonbValue *v)
{
	char	   *plain = json_text_of(v);
	int			len = strlen(plain);
	char	   *sealed = palloc(len + ES_SEAL_OVERHEAD);

	es_seal(key, subject, strlen(subject), plain, len, sealed);
	explicit_bzero(plain, len);
	return psprintf(ENVELOPE_PREFIX "%s:%s", base64_of(subject, strlen(subject)),
					base64_of(sealed, len + ES_SEAL_OVERHEAD));
}

/*
 * The value an envelope (text of len bytes) seals: NULL (JSON null) when
 * its subject was forgotten; an error when it is no envelope or does not
 * authenticate.
 */
static JsonbValue *
envelope_open(EsStore *s, const char *text, int len)
{
	const char *colon;
	char	   *subject;
	char	   *sealed;
	char	   *plain;
	int			slen;
	int			n;
	uint8		key[ES_KEY_LEN];
	JsonbValue *v;

	if (len < (int) strlen(ENVELOPE_PREFIX) || strncmp(text, ENVELOPE_PREFIX, strlen(ENVELOPE_PREFIX)) != 0 ||
		(colon = memchr(text + strlen(ENVELOPE_PREFIX), ':', len - strlen(ENVELOPE_PREFIX))) == NULL ||
		(subject = bytes_of_base64(text + strlen(ENVELOPE_PREFIX),
								   colon - text - strlen(ENVELOPE_PREFIX), &slen)) == NULL ||
		slen == 0 || slen > ES_MAX_ID_LEN || memchr(subject, '\0', slen) != NULL ||
		(sealed = bytes_of_base64(colon + 1, len - (colon + 1 - text), &n)) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("a sealed personal field is damaged"),
				 errdetail("Its value is not an envelope of personal data: %.60s", pnstrdup(text, len)),
				 errhint("es_verify() tells which event was changed.")));
	if (es_subject_key(s, subject, false, key) != ES_SUBJECT_KEY_FOUND)
		return NULL;
	plain = palloc(n + 1);
	if (!es_unseal(key, subject, slen, sealed, n, plain))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("a sealed personal field of data subject \"%s\" does not decrypt", subject),
				 errdetail("The field was changed after it was sealed."),
				 errhint("es_verify() tells which event was changed.")));
	plain[n - ES_SEAL_OVERHEAD] = '\0';
	v = json_value_of(plain);
	explicit_bzero(plain, n);
	return v;
}

/*
 * Rewrite the top-level members of an object: fn returns the new value of
 * a member, NULL to keep it, or &omit to leave it out.
 */
typedef JsonbValue *(*MemberFn) (const char *key, int keylen, JsonbValue *v, void *arg);

static JsonbValue omit;

static Jsonb *
object_rewrite(Jsonb *obj, MemberFn fn, void *arg)
{
	JsonbParseState *state = NULL;
	JsonbIterator *it = JsonbIteratorInit(&obj->root);
	JsonbValue	v;
	JsonbValue	k;
	JsonbValue *res = NULL;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			k = v;
		else if (tok == WJB_VALUE)
		{
			JsonbValue *nv = fn(k.val.string.val, k.val.string.len, &v, arg);

			if (nv == &omit)
				continue;
			pushJsonbValue(&state, WJB_KEY, &k);
			res = pushJsonbValue(&state, WJB_VALUE, nv ? nv : &v);
		}
		else
			res = pushJsonbValue(&state, tok, tok == WJB_BEGIN_OBJECT || tok == WJB_END_OBJECT ? NULL : &v);
	}
	return JsonbValueToJsonb(res);
}

static bool
name_listed(const char *key, int keylen, char **names, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		if ((int) strlen(names[i]) == keylen && memcmp(names[i], key, keylen) == 0)
			return true;
	return false;
}

/* es_personal_seal's member function: seal the personal fields. */
typedef struct SealArg
{
	PersonalType *type;
	const uint8 *key;
	const char *subject;
	List	   *sealed;			/* names of the fields sealed */
} SealArg;

static JsonbValue *
seal_member(const char *key, int keylen, JsonbValue *v, void *arg)
{
	SealArg    *a = (SealArg *) arg;
	JsonbValue *nv;

	if (v->type == jbvNull || !name_listed(key, keylen, a->type->fields, a->type->nfields))
		return NULL;
	nv = palloc(sizeof(JsonbValue));
	nv->type = jbvString;
	nv->val.string.val = envelope_of(a->key, a->subject, v);
	nv->val.string.len = strlen(nv->val.string.val);
	a->sealed = lappend(a->sealed, pnstrdup(key, keylen));
	return nv;
}

/* metadata with "personal_data": {"subject": subject, "fields": fields} added. */
static Jsonb *
metadata_with_personal(Jsonb *metadata, const char *subject, List *fields)
{
	JsonbParseState *state = NULL;
	JsonbIterator *it = JsonbIteratorInit(&metadata->root);
	JsonbValue	v;
	JsonbValue *res = NULL;
	JsonbIteratorToken tok;
	ListCell   *lc;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_END_OBJECT)
		{
			es_push_string(&state, WJB_KEY, "personal_data");
			pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
			es_push_string(&state, WJB_KEY, "subject");
			es_push_string(&state, WJB_VALUE, subject);
			es_push_string(&state, WJB_KEY, "fields");
			pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
			foreach(lc, fields)
				es_push_string(&state, WJB_ELEM, (const char *) lfirst(lc));
			pushJsonbValue(&state, WJB_END_ARRAY, NULL);
			pushJsonbValue(&state, WJB_END_OBJECT, NULL);
		}
		res = pushJsonbValue(&state, tok, tok == WJB_BEGIN_OBJECT || tok == WJB_END_OBJECT ? NULL : &v);
	}
	return JsonbValueToJsonb(res);
}

/* The subject of an event of type t with data: a string or number field, or the aggregate. */
static char *
seal_subject(PersonalType *t, const char *event_type, const char *aggregate_id, Jsonb *data)
{
	JsonbValue *v;
	char	   *subject;

	if (t->subject_field == NULL)
		return pstrdup(aggregate_id);
	v = getKeyJsonValueFromContainer(&data->root, t->subject_field, strlen(t->subject_field), NULL);
	if (v == NULL || (v->type != jbvString && v->type != jbvNumeric))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event of type \"%s\" has no data subject", event_type),
				 errdetail("Its personal data belongs to the subject whose id is in the data's field \"%s\", a string or a number; the event has %s.",
						   t->subject_field, v == NULL ? "no such field" : "another kind of value there"),
				 errhint("Give the subject's id in \"%s\".", t->subject_field)));
	/*
	 * A number without the scale it was written with: 42, 42.0 and "42"
	 * are one subject, whose es_forget('42') reaches them all.
	 */
	subject = v->type == jbvString ? pnstrdup(v->val.string.val, v->val.string.len)
		: DatumGetCString(DirectFunctionCall1(numeric_out,
											  DirectFunctionCall1(numeric_trim_scale,
																  NumericGetDatum(v->val.numeric))));
	es_check_id(subject, "data subject id");
	return subject;
}

/*
 * es_personal_seal: when event_type has personal fields, the data and
 * metadata to store: the fields present (not null) sealed with the key of
 * their subject (made on its first use), and metadata saying so.  False
 * (nothing set) when the type has none.  Needs SPI, as the store's owner.
 */
bool
es_personal_seal(EsStore *s, const char *event_type, const char *aggregate_id,
				 Jsonb *data, Jsonb *metadata, Jsonb **sealed_data, Jsonb **sealed_metadata)
{
	PersonalType *t;
	SealArg		a;
	uint8		key[ES_KEY_LEN];
	Jsonb	   *out;
	int			i;

	registry_refresh(s);
	if (hash_get_num_entries(registry) == 0 || strlen(event_type) > ES_MAX_NAME_LEN ||
		(t = hash_search(registry, event_type, HASH_FIND, NULL)) == NULL)
		return false;
	/* Only an event that carries one of the fields needs its subject's key. */
	for (i = 0; i < t->nfields; i++)
	{
		JsonbValue *v = getKeyJsonValueFromContainer(&data->root, t->fields[i], strlen(t->fields[i]), NULL);

		if (v != NULL && v->type != jbvNull)
			break;
	}
	if (i == t->nfields)
		return false;
	a.type = t;
	a.subject = seal_subject(t, event_type, aggregate_id, data);
	a.key = key;
	a.sealed = NIL;
	if (es_subject_key(s, a.subject, true, key) != ES_SUBJECT_KEY_FOUND)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("data subject \"%s\" was forgotten", a.subject),
				 errdetail("es_forget destroyed the key of its personal data; no new personal data of it is stored."),
				 errhint("Append the event without the personal fields of type \"%s\", or under a new subject id.",
						 event_type)));
	out = object_rewrite(data, seal_member, &a);
	explicit_bzero(key, ES_KEY_LEN);
	if (a.sealed == NIL)
		return false;
	*sealed_data = out;
	*sealed_metadata = metadata_with_personal(metadata, a.subject, a.sealed);
	return true;
}

/* The personal_data member of metadata, or NULL. */
static JsonbValue *
personal_member(Jsonb *metadata, const char *key)
{
	JsonbValue *pd;

	if (!JB_ROOT_IS_OBJECT(metadata) ||
		(pd = getKeyJsonValueFromContainer(&metadata->root, "personal_data", strlen("personal_data"), NULL)) == NULL ||
		pd->type != jbvBinary || !JsonContainerIsObject(pd->val.binary.data))
		return NULL;
	return getKeyJsonValueFromContainer(pd->val.binary.data, key, strlen(key), NULL);
}

/* es_personal_subject: the subject whose personal data an event's metadata lists, or NULL. */
const char *
es_personal_subject(Jsonb *metadata)
{
	JsonbValue *v = personal_member(metadata, "subject");

	return v && v->type == jbvString ? pnstrdup(v->val.string.val, v->val.string.len) : NULL;
}

/* The names of the sealed fields that metadata lists (n of them), or NULL. */
static char **
personal_fields(Jsonb *metadata, int *n)
{
	JsonbValue *v = personal_member(metadata, "fields");
	JsonbIterator *it;
	JsonbValue	e;
	JsonbIteratorToken tok;
	char	  **names;

	*n = 0;
	if (v == NULL || v->type != jbvBinary)
		return NULL;
	names = palloc(sizeof(char *) * (JsonContainerSize(v->val.binary.data) + 1));
	it = JsonbIteratorInit(v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
		if (tok == WJB_ELEM && e.type == jbvString)
			names[(*n)++] = pnstrdup(e.val.string.val, e.val.string.len);
	return names;
}

typedef struct RevealArg
{
	EsStore    *store;
	char	  **fields;
	int			nfields;
} RevealArg;

static JsonbValue *
reveal_member(const char *key, int keylen, JsonbValue *v, void *arg)
{
	RevealArg  *a = (RevealArg *) arg;
	JsonbValue *nv;

	if (!name_listed(key, keylen, a->fields, a->nfields) || v->type != jbvString)
		return NULL;
	nv = envelope_open(a->store, v->val.string.val, v->val.string.len);
	if (nv == NULL)
	{
		nv = palloc(sizeof(JsonbValue));
		nv->type = jbvNull;
	}
	return nv;
}

/*
 * es_personal_revealed: data with the fields its event's metadata lists as
 * sealed opened (JSON null when forgotten); data itself when it has none.
 * Needs SPI, as the store's owner.
 */
Jsonb *
es_personal_revealed(EsStore *s, Jsonb *data, Jsonb *metadata)
{
	RevealArg	a;

	a.fields = personal_fields(metadata, &a.nfields);
	if (a.nfields == 0)
		return data;
	a.store = s;
	return object_rewrite(data, reveal_member, &a);
}

static JsonbValue *
omit_member(const char *key, int keylen, JsonbValue *v, void *arg)
{
	RevealArg  *a = (RevealArg *) arg;

	return name_listed(key, keylen, a->fields, a->nfields) ? &omit : NULL;
}

/* es_personal_omitted: data without the sealed fields metadata lists. */
Jsonb *
es_personal_omitted(Jsonb *data, Jsonb *metadata)
{
	RevealArg	a;

	a.fields = personal_fields(metadata, &a.nfields);
	if (a.nfields == 0)
		return data;
	return object_rewrite(data, omit_member, &a);
}

/*
 * es_personal_reveal_row: es_personal_revealed on a deformed es_events row;
 * whether the row changed.  Most rows have no personal data: their
 * metadata, when stored inline and uncompressed, is searched for the key's
 * name as bytes first (a jsonb object stores its keys as plain strings),
 * without the copy that reading it as jsonb makes of a short value.
 */
bool
es_personal_reveal_row(EsStore *s, Datum *values, bool *isnull)
{
	struct varlena *raw;
	Jsonb	   *metadata;

	if (isnull[EV_DATA] || isnull[EV_METADATA])
		return false;
	raw = (struct varlena *) DatumGetPointer(values[EV_METADATA]);
	if (!VARATT_IS_EXTENDED(raw) || VARATT_IS_SHORT(raw))
	{
		if (memmem(VARDATA_ANY(raw), VARSIZE_ANY_EXHDR(raw), "personal_data", strlen("personal_data")) == NULL)
			return false;
	}
	metadata = DatumGetJsonbP(values[EV_METADATA]);
	if (!JB_ROOT_IS_OBJECT(metadata) ||
		getKeyJsonValueFromContainer(&metadata->root, "personal_data", strlen("personal_data"), NULL) == NULL)
		return false;
	values[EV_DATA] = JsonbPGetDatum(es_personal_revealed(s, DatumGetJsonbP(values[EV_DATA]), metadata));
	return true;
}

/*
 * es_personal_revealed_tuple: an es_events row (of desc) with its personal
 * fields revealed; the row itself when it has none.
 */
HeapTuple
es_personal_revealed_tuple(EsStore *s, TupleDesc desc, HeapTuple row)
{
	Datum		values[EV_NATTS];
	bool		isnull[EV_NATTS];
	bool		null;
	Datum		metadata = heap_getattr(row, EV_METADATA + 1, desc, &null);
	Jsonb	   *md;

	if (null)
		return row;
	md = DatumGetJsonbP(metadata);
	if (!JB_ROOT_IS_OBJECT(md) ||
		getKeyJsonValueFromContainer(&md->root, "personal_data", strlen("personal_data"), NULL) == NULL)
		return row;
	es_deform_event(row, desc, values, isnull);
	es_personal_reveal_row(s, values, isnull);
	return heap_form_tuple(desc, values, isnull);
}

/*
 * The key of a state folded from the personal data of subjects (sorted):
 * derived from all their keys, so that forgetting any one makes the state
 * unreadable.  False when one is forgotten (or gone).
 */
static bool
state_key(EsStore *s, List *subjects, uint8 *key)
{
	static const char derive[] = "ultracore_es snapshot v1";
	ListCell   *lc;
	char	   *keys = palloc(ES_KEY_LEN * list_length(subjects));
	int			i = 0;
	bool		ok = true;

	foreach(lc, subjects)
	{
		if (es_subject_key(s, (const char *) lfirst(lc), false, (uint8 *) keys + ES_KEY_LEN * i++) !=
			ES_SUBJECT_KEY_FOUND)
			ok = false;
	}
	if (ok)
		es_sha256(derive, sizeof(derive), keys, ES_KEY_LEN * list_length(subjects), key);
	explicit_bzero(keys, ES_KEY_LEN * list_length(subjects));
	return ok;
}

/*
 * es_personal_seal_state: the state to store in a snapshot folded from the
 * personal data of subjects (sorted, NIL: none): a JSON string that seals
 * it with their keys; NULL when one of them was forgotten (no snapshot).
 */
Jsonb *
es_personal_seal_state(EsStore *s, Jsonb *state, List *subjects)
{
	uint8		key[ES_KEY_LEN];
	char	   *plain;
	int			len;
	char	   *sealed;
	JsonbValue	v;

	if (subjects == NIL)
		return state;
	if (!state_key(s, subjects, key))
		return NULL;
	plain = JsonbToCString(NULL, &state->root, VARSIZE(state));
	len = strlen(plain);
	sealed = palloc(len + ES_SEAL_OVERHEAD);
	es_seal(key, STATE_PREFIX, strlen(STATE_PREFIX), plain, len, sealed);
	explicit_bzero(plain, len);
	explicit_bzero(key, ES_KEY_LEN);
	v.type = jbvString;
	v.val.string.val = psprintf(STATE_PREFIX "%s", base64_of(sealed, len + ES_SEAL_OVERHEAD));
	v.val.string.len = strlen(v.val.string.val);
	return JsonbValueToJsonb(&v);
}

/*
 * es_personal_unseal_state: the reverse; NULL when a subject was forgotten
 * (the snapshot cannot serve) or the value is not a sealed state.
 */
Jsonb *
es_personal_unseal_state(EsStore *s, Jsonb *sealed, List *subjects)
{
	uint8		key[ES_KEY_LEN];
	JsonbValue	v;
	char	   *bytes;
	char	   *plain;
	int			n;
	Jsonb	   *state;

	if (subjects == NIL)
		return sealed;
	if (!JB_ROOT_IS_SCALAR(sealed) || !JsonbExtractScalar(&sealed->root, &v) || v.type != jbvString ||
		v.val.string.len < (int) strlen(STATE_PREFIX) ||
		strncmp(v.val.string.val, STATE_PREFIX, strlen(STATE_PREFIX)) != 0 ||
		(bytes = bytes_of_base64(v.val.string.val + strlen(STATE_PREFIX),
								 v.val.string.len - strlen(STATE_PREFIX), &n)) == NULL ||
		!state_key(s, subjects, key))
		return NULL;
	plain = palloc(n + 1);
	if (!es_unseal(key, STATE_PREFIX, strlen(STATE_PREFIX), bytes, n, plain))
	{
		explicit_bzero(key, ES_KEY_LEN);
		return NULL;
	}
	explicit_bzero(key, ES_KEY_LEN);
	plain[n - ES_SEAL_OVERHEAD] = '\0';
	state = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(plain)));
	explicit_bzero(plain, n);
	return state;
}

static EsPlan register_plan = {
	"INSERT INTO @extschema@.es_personal_data (event_type, fields, subject_field, registered_at, registered_by)"
	" VALUES ($1, $2, $3, pg_catalog.now(), session_user)"
	" ON CONFLICT (event_type) DO UPDATE SET fields = excluded.fields, subject_field = excluded.subject_field,"
	"     registered_at = excluded.registered_at, registered_by = excluded.registered_by",
	3, {TEXTOID, TEXTARRAYOID, TEXTOID}
};

static EsPlan event_type_plan = {
	"SELECT 1 FROM @extschema@.es_event_types t WHERE t.event_type OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

/*
 * es_register_personal_data(event_type, fields, subject_field) returns void
 *
 * From now on, the top-level fields of that event type's data are sealed
 * personal data of the subject whose id is in subject_field (NULL: the
 * aggregate id).  Registering again replaces the registration; events
 * stored before keep what they were stored with.
 */
PG_FUNCTION_INFO_V1(es_register_personal_data);
Datum
es_register_personal_data(PG_FUNCTION_ARGS)
{
	char	   *event_type = es_arg_name(fcinfo, 0, "event_type", true);
	char	   *subject_field = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	ArrayType  *fields;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;
	EsCall		call;
	Datum		args[3];
	char		argnulls[3] = {' ', ' ', ' '};

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("fields must not be NULL")));
	fields = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(fields) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("fields must be a one-dimensional array")));
	deconstruct_array(fields, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("fields must name at least one field")));
	for (i = 0; i < n; i++)
	{
		char	   *f = nulls[i] ? NULL : TextDatumGetCString(elems[i]);

		if (f == NULL || f[0] == '\0' || strlen(f) > ES_MAX_NAME_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("field %d of fields is %s", i + 1,
							f == NULL ? "NULL" : f[0] == '\0' ? "empty" : "longer than 128 bytes"),
					 errdetail("Each names a top-level field of the event's data.")));
		if (subject_field && strcmp(f, subject_field) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("subject_field \"%s\" cannot be a personal field itself", f),
					 errdetail("The subject's id names the key its personal data is sealed with: it is stored in the clear."),
					 errhint("Use an opaque id (a customer number) as the subject, not personal data.")));
	}
	if (subject_field && (subject_field[0] == '\0' || strlen(subject_field) > ES_MAX_NAME_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("subject_field must name a top-level field of the event's data")));

	PreventCommandIfReadOnly("es_register_personal_data()");
	es_call_begin(fcinfo, &call);
	if (!OidIsValid(call.store->personal_data_relid))
		elog(ERROR, "es_personal_data does not exist: update the extension");
	es_require_master_key();
	args[0] = CStringGetTextDatum(event_type);
	if (SPI_execute_plan(es_plan(&event_type_plan), args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read es_event_types");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("event type \"%s\" is not registered", event_type),
				 errhint("Register it first with es_register_event_type.")));
	args[1] = PointerGetDatum(fields);
	args[2] = subject_field ? CStringGetTextDatum(subject_field) : (Datum) 0;
	argnulls[2] = subject_field ? ' ' : 'n';
	if (SPI_execute_plan(es_plan(&register_plan), args, argnulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not register the personal data of \"%s\"", event_type);
	es_call_end(&call);
	PG_RETURN_VOID();
}

/*
 * es_reveal(value text) returns text, es_reveal(value jsonb) returns jsonb
 *
 * For the read-model views: a value that is an envelope of personal data
 * opened (for text, a JSON string's content, any other value's JSON text);
 * NULL once its subject was forgotten; any other value as it is.
 */
static bool
looks_sealed(const char *p, int len)
{
	return len > (int) strlen(ENVELOPE_PREFIX) && strncmp(p, ENVELOPE_PREFIX, strlen(ENVELOPE_PREFIX)) == 0;
}

/*
 * personal_stripped: v without its sealed personal fields, wherever they
 * are: every object member and array element whose value is an envelope
 * is left out (a scalar envelope becomes JSON null).  By value, not by the
 * names the event's metadata lists, so that a field an upcaster renamed or
 * moved since it was sealed is left out too.
 */
static Jsonb *
personal_stripped(Jsonb *v)
{
	JsonbParseState *state = NULL;
	JsonbIterator *it;
	JsonbValue	tok_value;
	JsonbValue	key;
	JsonbValue *res = NULL;
	JsonbIteratorToken tok;
	bool		key_pending = false;

	if (JB_ROOT_IS_SCALAR(v))
	{
		JsonbValue	scalar;

		if (JsonbExtractScalar(&v->root, &scalar) && scalar.type == jbvString &&
			looks_sealed(scalar.val.string.val, scalar.val.string.len))
		{
			scalar.type = jbvNull;
			return JsonbValueToJsonb(&scalar);
		}
		return v;
	}
	it = JsonbIteratorInit(&v->root);
	while ((tok = JsonbIteratorNext(&it, &tok_value, false)) != WJB_DONE)
	{
		CHECK_FOR_INTERRUPTS();
		switch (tok)
		{
			case WJB_KEY:
				key = tok_value;
				key_pending = true;
				continue;
			case WJB_VALUE:
			case WJB_ELEM:
				key_pending = false;
				if (tok_value.type == jbvString &&
					looks_sealed(tok_value.val.string.val, tok_value.val.string.len))
					continue;
				if (tok == WJB_VALUE)
					pushJsonbValue(&state, WJB_KEY, &key);
				res = pushJsonbValue(&state, tok, &tok_value);
				break;
			case WJB_BEGIN_OBJECT:
			case WJB_BEGIN_ARRAY:
				if (key_pending)
					pushJsonbValue(&state, WJB_KEY, &key);
				key_pending = false;
				res = pushJsonbValue(&state, tok, NULL);
				break;
			default:
				res = pushJsonbValue(&state, tok, NULL);
				break;
		}
	}
	return JsonbValueToJsonb(res);
}

/*
 * es_without_personal_data(value jsonb) returns jsonb
 *
 * value without its sealed personal fields, at any depth (the notification
 * outbox's payload; a handler's own copy of an event bound elsewhere).
 */
PG_FUNCTION_INFO_V1(es_without_personal_data);
Datum
es_without_personal_data(PG_FUNCTION_ARGS)
{
	PG_RETURN_JSONB_P(personal_stripped(PG_GETARG_JSONB_P(0)));
}

PG_FUNCTION_INFO_V1(es_reveal_text);
Datum
es_reveal_text(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);
	EsCall		call;
	JsonbValue *v;
	text	   *out = NULL;

	if (!looks_sealed(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)))
		PG_RETURN_TEXT_P(t);
	es_call_begin(fcinfo, &call);
	v = envelope_open(call.store, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	if (v != NULL)
	{
		char	   *o = v->type == jbvString ? pnstrdup(v->val.string.val, v->val.string.len) : json_text_of(v);
		int			len = strlen(o);

		out = SPI_palloc(VARHDRSZ + len);	/* outlives the SPI connection */
		SET_VARSIZE(out, VARHDRSZ + len);
		memcpy(VARDATA(out), o, len);
	}
	es_call_end(&call);
	if (out == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(out);
}

PG_FUNCTION_INFO_V1(es_reveal_jsonb);
Datum
es_reveal_jsonb(PG_FUNCTION_ARGS)
{
	Jsonb	   *jb = PG_GETARG_JSONB_P(0);
	JsonbValue	s;
	EsCall		call;
	JsonbValue *v;
	Datum		out = (Datum) 0;

	if (!JB_ROOT_IS_SCALAR(jb) || !JsonbExtractScalar(&jb->root, &s) || s.type != jbvString ||
		!looks_sealed(s.val.string.val, s.val.string.len))
		PG_RETURN_JSONB_P(jb);
	es_call_begin(fcinfo, &call);
	v = envelope_open(call.store, s.val.string.val, s.val.string.len);
	if (v != NULL)
		out = SPI_datumTransfer(JsonbPGetDatum(JsonbValueToJsonb(v)), false, -1);
	es_call_end(&call);
	if (v == NULL)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(out);
}
