/*-------------------------------------------------------------------------
 *
 * consumer_catalog.c
 *	  The consumer catalog's rules, shared by handlers and projections:
 *	  names, the function a consumer calls, its event-type filter, its retry
 *	  policy; and the last error kept on a consumer's row.
 *
 * Needs an SPI connection where it queries (es_call_begin).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/consumer.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "core/step.h"
#include "core/validate.h"
#include "write/event_type.h"

/*
 * es_arg_consumer_name: a handler's or projection's name (what), argument
 * argno: a name, at most 63 bytes (NAMEDATALEN - 1).
 */
char *
es_arg_consumer_name(FunctionCallInfo fcinfo, int argno, const char *what)
{
	char	   *name = es_arg_name(fcinfo, argno, what, true);

	if (strlen(name) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", what),
				 errdetail("It is %zu bytes long; the limit is %d bytes.", strlen(name), NAMEDATALEN - 1)));
	return name;
}

static EsPlan projection_named_plan = {
	"SELECT FROM @extschema@.es_projections WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static EsPlan handler_named_plan = {
	"SELECT FROM @extschema@.es_consumers"
	" WHERE name OPERATOR(pg_catalog.=) $1 AND kind OPERATOR(pg_catalog.=) 'handler'",
	1, {TEXTOID}
};

/*
 * es_check_consumer_name_free: handler names and projection names do not
 * overlap; name is about to become one of kind ("handler" or
 * "projection").
 */
void
es_check_consumer_name_free(const char *name, const char *kind)
{
	bool		for_handler = strcmp(kind, "handler") == 0;
	Datum		arg = CStringGetTextDatum(name);

	if (SPI_execute_plan(es_plan(for_handler ? &projection_named_plan : &handler_named_plan),
						 &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up consumer \"%s\"", name);
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("\"%s\" is the name of a %s", name, for_handler ? "projection" : "handler"),
				 errhint("Handlers and projections need different names.")));
}

/*
 * es_check_consumer_function: a handler or projection function takes one
 * es_events row (or a row of the 1.0 table, a partition of es_events since
 * the update to 1.1: the same columns, which a function made under 1.0 is
 * typed on); the registering role must be allowed to execute it (it runs
 * as that role).  what: "handler" or "projection".
 */
void
es_check_consumer_function(Oid fn, const EsStore *s, Oid caller, const char *what)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	Form_pg_proc proc;
	bool		ok;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fn)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	ok = proc->prokind == PROKIND_FUNCTION && !proc->proretset && proc->pronargs == 1 &&
		(proc->proargtypes.values[0] == s->events_rowtype ||
		 (OidIsValid(s->events_1_0_rowtype) && proc->proargtypes.values[0] == s->events_1_0_rowtype));
	ReleaseSysCache(tup);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("function %s cannot be a %s", format_procedure(fn), what),
				 errdetail("A %s is a plain function taking one argument of type es_events.", what)));
	if (pg_proc_aclcheck(fn, caller, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", format_procedure(fn)),
				 errdetail("A %s runs as the role that registers it.", what)));
}

/* es_check_event_type_filter: each event type of a filter must be registered. */
void
es_check_event_type_filter(ArrayType *types)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	deconstruct_array(types, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event_types must not be empty"),
				 errhint("Pass NULL for every event type.")));
	for (i = 0; i < n; i++)
	{
		EsEventType type;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("event_types must not contain NULL")));
		es_event_type_lookup(TextDatumGetCString(elems[i]), &type);
	}
}

/*
 * The span of a backoff or timeout in microseconds, as the worker reads it
 * (date_part('epoch', ...): a day of 24 hours).  A months part is refused:
 * a month is 30 days to interval comparison and 30.4375 to date_part, so
 * '1 mon -30 days' would pass the check as nothing and wait 10.5 hours.
 */
static int64
consumer_interval_us(Interval *span, const char *what)
{
	if (span->month != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not have a months part", what),
				 errhint("Give it in days, hours, minutes or seconds.")));
	return span->time + (int64) span->day * USECS_PER_DAY;
}

/*
 * es_check_retry_policy: max_retries not negative, backoff (NULL: the
 * default) between zero and a day.
 */
void
es_check_retry_policy(int32 max_retries, Interval *backoff)
{
	int64		us;

	if (max_retries < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("max_retries must not be negative")));
	if (backoff == NULL)
		return;
	us = consumer_interval_us(backoff, "backoff");
	if (us < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("backoff must not be negative")));
	if (us > USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("backoff must be at most one day")));
}

/* es_check_timeout: a handler's or projection's timeout (NULL: none) is above zero and at most a day. */
void
es_check_timeout(Interval *timeout)
{
	int64		us;

	if (timeout == NULL)
		return;
	us = consumer_interval_us(timeout, "timeout");
	if (us < 1000)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("timeout must be at least one millisecond"),
				 errhint("Pass NULL for no timeout.")));
	if (us > USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("timeout must be at most one day")));
}

/*
 * es_retry_delay_us: the wait before retry number attempts (1, 2, ...):
 * backoff_us doubled at each attempt after the first, up to a day.  In
 * integers: 2^(attempts - 1) as a double overflowed int64 from retry 45
 * of a one-second backoff, and made NaN of a zero one past retry 1024.
 */
int64
es_retry_delay_us(int64 backoff_us, int attempts)
{
	int			doublings = attempts - 1;

	if (backoff_us <= 0)
		return 0;
	if (doublings >= 63 || backoff_us > (USECS_PER_DAY >> doublings))
		return USECS_PER_DAY;
	return Min(backoff_us << doublings, USECS_PER_DAY);
}

static EsPlan failed_plan = {
	"UPDATE @extschema@.es_consumers SET last_error = $2, last_error_at = pg_catalog.now()"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	2, {TEXTOID, TEXTOID}
};

typedef struct Failure
{
	const char *name;
	const char *message;
} Failure;

static void
record_failure_step(EsStore *s, void *arg)
{
	Failure    *f = (Failure *) arg;
	Datum		args[2];

	args[0] = CStringGetTextDatum(f->name);
	args[1] = CStringGetTextDatum(f->message);
	if (SPI_execute_plan(es_plan(&failed_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the failure of consumer \"%s\"", f->name);
}

/*
 * es_consumer_record_failure: keep an error on a consumer's row
 * (last_error), in a transaction of its own: for the background processes,
 * outside any transaction.  The Kafka clients' rows too.
 */
void
es_consumer_record_failure(const char *name, const char *message)
{
	Failure		f = {name, message};

	(void) es_step_in_transaction(record_failure_step, &f, true, NULL, NULL, NULL);
}
