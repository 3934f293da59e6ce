/*-------------------------------------------------------------------------
 *
 * dead_letter.c
 *	  A consumer's dead letters, as its batches meet them: the events it
 *	  gave up on after its retries, the later events of the same aggregate
 *	  parked behind them, and the retries operators asked for
 *	  (es_retry_dead_letter, handler.c).
 *
 * A dead letter holds back the later events of its aggregate for its
 * consumer: they are recorded behind it (status 'parked') instead of being
 * delivered, because a handler that saw PAYMENT_COMPLETED without the
 * PAYMENT_INITIATED it failed on would act on a state that never existed.
 * Retrying the dead letter delivers it, then its parked events, in order;
 * if it fails again they stay parked behind it.
 *
 * Runs in the consumer's batch (consumer.c): its transaction, SPI
 * connection and snapshot.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/consumer_internal.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "core/guc.h"
#include "core/store.h"
#include "read/read.h"

static EsPlan parked_plan = {
	"SELECT DISTINCT ON (d.aggregate_id) d.aggregate_id, d.id"
	"  FROM @extschema@.es_dead_letters d"
	" WHERE d.consumer OPERATOR(pg_catalog.=) $1 AND d.status OPERATOR(pg_catalog.<>) 'resolved'"
	" ORDER BY d.aggregate_id, d.tx_id, d.position",
	1, {TEXTOID}
};

static EsPlan dead_letter_plan = {
	"INSERT INTO @extschema@.es_dead_letters"
	" (consumer, event_id, tx_id, position, aggregate_id, event_type, status, parked_behind, error,"
	"  attempts, first_failed_at, last_failed_at)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
	" RETURNING id",
	12, {TEXTOID, TEXTOID, XID8OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID, INT4OID,
	TIMESTAMPTZOID, TIMESTAMPTZOID}
};

/* The next letter to retry, of the consumer's segment. */
static EsPlan retrying_plan = {
	"SELECT d.id, d.event_id, d.aggregate_id, d.attempts FROM @extschema@.es_dead_letters d"
	" WHERE d.consumer OPERATOR(pg_catalog.=) $1 AND d.status OPERATOR(pg_catalog.=) 'retrying'"
	"   AND ($2 OPERATOR(pg_catalog.=) 1"
	"        OR @extschema@.es_segment_of(d.aggregate_id, $2) OPERATOR(pg_catalog.=) $3)"
	" ORDER BY d.tx_id, d.position LIMIT 1",
	3, {TEXTOID, INT4OID, INT4OID}
};

static EsPlan resolved_plan = {
	"WITH done AS ("
	"  UPDATE @extschema@.es_dead_letters SET status = 'resolved', resolved_at = pg_catalog.now()"
	"   WHERE id OPERATOR(pg_catalog.=) $1 RETURNING consumer, aggregate_id)"
	" UPDATE @extschema@.es_dead_letters d SET status = 'retrying', parked_behind = NULL"
	"   FROM done"
	"  WHERE d.consumer OPERATOR(pg_catalog.=) done.consumer"
	"    AND d.aggregate_id OPERATOR(pg_catalog.=) done.aggregate_id"
	"    AND d.status OPERATOR(pg_catalog.=) 'parked'",
	1, {INT8OID}
};

static EsPlan still_dead_plan = {
	"WITH dead AS ("
	"  UPDATE @extschema@.es_dead_letters"
	"     SET status = 'dead', attempts = attempts OPERATOR(pg_catalog.+) 1, error = $2,"
	"         last_failed_at = pg_catalog.now()"
	"   WHERE id OPERATOR(pg_catalog.=) $1 RETURNING id, consumer, aggregate_id, tx_id, position)"
	" UPDATE @extschema@.es_dead_letters d SET status = 'parked', parked_behind = dead.id"
	"   FROM dead"
	"  WHERE d.consumer OPERATOR(pg_catalog.=) dead.consumer"
	"    AND d.aggregate_id OPERATOR(pg_catalog.=) dead.aggregate_id"
	"    AND d.status OPERATOR(pg_catalog.=) 'retrying'"
	"    AND ROW(d.tx_id, d.position) OPERATOR(pg_catalog.>) ROW(dead.tx_id, dead.position)",
	2, {INT8OID, TEXTOID}
};

/*
 * es_dead_letter_add: record ev as a dead letter of c with status "dead"
 * (error, attempts, first failure) or "parked" (behind dead letter
 * behind).  Returns its id.
 */
int64
es_dead_letter_add(Consumer *c, BatchEvent *ev, const char *status, int64 behind,
				   const char *error, int32 attempts, TimestampTz first_failed)
{
	Datum		args[12];
	char		nulls[12];
	bool		isnull;
	int64		id;

	memset(nulls, ' ', sizeof(nulls));
	args[0] = CStringGetTextDatum(c->name);
	args[1] = CStringGetTextDatum(ev->event_id);
	args[2] = FullTransactionIdGetDatum(ev->tx);
	args[3] = Int64GetDatum(ev->position);
	args[4] = CStringGetTextDatum(ev->aggregate_id);
	args[5] = CStringGetTextDatum(ev->event_type);
	args[6] = CStringGetTextDatum(status);
	args[7] = Int64GetDatum(behind);
	nulls[7] = behind ? ' ' : 'n';
	args[8] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[8] = error ? ' ' : 'n';
	args[9] = Int32GetDatum(attempts);
	args[10] = TimestampTzGetDatum(first_failed);
	nulls[10] = first_failed ? ' ' : 'n';
	args[11] = TimestampTzGetDatum(GetCurrentTimestamp());
	nulls[11] = error ? ' ' : 'n';
	if (SPI_execute_plan(es_plan(&dead_letter_plan), args, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not record a dead letter of consumer \"%s\"", c->name);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return id;
}

/*
 * es_dead_letter_parked: the aggregates with an unresolved dead letter of
 * c, each with the first of them, in a hash table in the current memory
 * context.
 */
HTAB *
es_dead_letter_parked(Consumer *c)
{
	HASHCTL		ctl;
	HTAB	   *parked;
	Datum		arg = CStringGetTextDatum(c->name);
	uint64		i;

	ctl.keysize = ES_MAX_ID_LEN + 1;
	ctl.entrysize = ES_MAX_ID_LEN + 1 + sizeof(int64);
	ctl.hcxt = CurrentMemoryContext;
	parked = hash_create("ultracore_es parked aggregates", 16, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	if (SPI_execute_plan(es_plan(&parked_plan), &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the dead letters of consumer \"%s\"", c->name);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *id = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));

		es_dead_letter_park(parked, id,
							DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull)));
	}
	SPI_freetuptable(SPI_tuptable);
	return parked;
}

/* es_dead_letter_parked_behind: the dead letter aggregate_id is parked behind; 0: none. */
int64
es_dead_letter_parked_behind(HTAB *parked, const char *aggregate_id)
{
	char	   *entry = hash_search(parked, aggregate_id, HASH_FIND, NULL);

	return entry != NULL ? *(int64 *) (entry + ES_MAX_ID_LEN + 1) : 0;
}

/* es_dead_letter_park: the later events of aggregate_id wait behind dead_letter. */
void
es_dead_letter_park(HTAB *parked, const char *aggregate_id, int64 dead_letter)
{
	char	   *entry = hash_search(parked, aggregate_id, HASH_ENTER, NULL);

	*(int64 *) (entry + ES_MAX_ID_LEN + 1) = dead_letter;
}

/*
 * es_dead_letter_retry: deliver the dead letters of c's segment marked for
 * retry, in commit order, each in a subtransaction: a success resolves it
 * and releases the events parked behind it (retried next, in order); a
 * failure parks the remaining ones of its aggregate behind it again.
 */
void
es_dead_letter_retry(Consumer *c)
{
	int			budget = es_worker_batch_size;

	while (budget-- > 0)
	{
		Datum		args[3];
		bool		isnull;
		int64		id;
		char	   *event_id;
		char	   *error = NULL;
		HTAB	   *seen;

		CHECK_FOR_INTERRUPTS();
		args[0] = CStringGetTextDatum(c->name);
		args[1] = Int32GetDatum(c->segments);
		args[2] = Int32GetDatum(c->segment);
		if (SPI_execute_plan(es_plan(&retrying_plan), args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read the dead letters of consumer \"%s\"", c->name);
		if (SPI_processed == 0)
			break;
		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		event_id = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		SPI_freetuptable(SPI_tuptable);

		c->nevents = 0;
		es_read_event(event_id, false, c->reveal, es_consumer_collect, c);
		args[0] = Int64GetDatum(id);
		if (c->nevents == 1)
		{
			seen = es_consumer_ledger(c);
			if (hash_search(seen, event_id, HASH_FIND, NULL) != NULL ||
				es_consumer_apply_careful(c, &c->events[0], &error))
			{
				if (hash_search(seen, event_id, HASH_FIND, NULL) == NULL)
					es_consumer_handled(c, &c->events[0]);
				if (SPI_execute_plan(es_plan(&resolved_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
					elog(ERROR, "could not resolve dead letter %lld", (long long) id);
				continue;
			}
		}
		else
			error = pstrdup("the event is no longer in the store");
		args[1] = CStringGetTextDatum(error);
		if (SPI_execute_plan(es_plan(&still_dead_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update dead letter %lld", (long long) id);
	}
	c->nevents = 0;
}
