/*-------------------------------------------------------------------------
 *
 * step.c
 *	  Steps in transactions of their own, for the background processes:
 *	  a step runs in a transaction (with an SPI connection and a snapshot)
 *	  or in a subtransaction, and an error it raises is caught, kept as
 *	  "SQLSTATE: message" text, and leaves the process ready for its next
 *	  step.
 *
 * The delivery workers run their consumers' batches and their maintenance
 * through these, and the Kafka clients their reads and writes.  Callers
 * are background processes outside any transaction (es_step_in_transaction)
 * or inside one they own (es_step_in_subtransaction).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "core/step.h"

#include "access/xact.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

/* "SQLSTATE: message" of an error, for last_error columns and dead letters. */
char *
es_error_text(ErrorData *edata)
{
	return psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode), edata->message);
}

/*
 * es_step_in_transaction: run step(store, arg) in a transaction of its own,
 * with an SPI connection and a snapshot, when the extension is installed
 * (*installed tells, when not NULL).  An error is logged (if report), the
 * transaction aborted, its SQLSTATE and es_error_text (in the caller's
 * memory) returned in *sqlerrcode and *error when not NULL, and false
 * returned: the process goes on.
 */
bool
es_step_in_transaction(EsStep step, void *arg, bool report, bool *installed, int *sqlerrcode,
					   char **error)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		EsStore    *s;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		s = es_store_current();
		if (installed != NULL)
			*installed = (s != NULL);
		if (s != NULL)
			step(s, arg);
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (report)
			EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		MemoryContextSwitchTo(cxt);
		if (sqlerrcode != NULL)
			*sqlerrcode = edata->sqlerrcode;
		if (error != NULL)
			*error = es_error_text(edata);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return ok;
}

/*
 * es_step_in_subtransaction: run fn(arg) in a subtransaction of its own.
 * NULL when it succeeded; else the error (in the caller's memory), with the
 * subtransaction rolled back: the caller records it or re-throws it
 * (ReThrowError).
 */
ErrorData *
es_step_in_subtransaction(void (*fn) (void *arg), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return edata;
}
