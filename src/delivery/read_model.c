/*-------------------------------------------------------------------------
 *
 * read_model.c
 *	  The guide's five read models (customers, accounts, transactions,
 *	  payments, loans): what each event does to its row, and the built-in
 *	  projections that apply it.
 *
 * Each model keeps one row per aggregate, keyed by the aggregate's id.  The
 * fold is plain C on a row held in memory (RmRow), and serves every path:
 *
 *	- the projection functions (es_project_accounts(event) and its siblings),
 *	  which the worker calls for async projections: load the row, fold the
 *	  event, write the row;
 *	- inline projections of an append: load the row once, fold the append's
 *	  events, write it once (one aggregate per append);
 *	- rebuilds: read the events ordered by aggregate and version, fold each
 *	  aggregate's events, write its row once.
 *
 * A row records the version of the last event folded into it; an event at or
 * below that version was folded before and is skipped, so that a repeated
 * delivery cannot count a payment twice.  Money is numeric from end to end:
 * JSON numbers are taken as they are written, JSON strings are parsed as
 * numeric, never through floating point.  A value of the wrong kind is an
 * error naming the event and the field; inline, it refuses the append.
 *
 * A row is read with a primary-key probe and written with saved plans
 * (store.c's EsPlan) built from the column lists below, which must match
 * the tables of the extension script (checked).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/read_model.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "read/read.h"

#define RM_MAX_COLUMNS	ES_PLAN_MAX_ARGS

typedef struct RmColumn
{
	const char *name;
	Oid			type;
} RmColumn;

/* A row in memory: the column values, and whether it is stored yet. */
typedef struct RmRow
{
	Datum		values[RM_MAX_COLUMNS];
	bool		nulls[RM_MAX_COLUMNS];
	bool		exists;
} RmRow;

/* What a fold reads of an event. */
typedef struct RmEvent
{
	const char *event_id;
	const char *event_type;
	const char *aggregate_id;
	int64		version;
	int64		position;
	TimestampTz occurred_at;
	Jsonb	   *data;
} RmEvent;

struct EsReadModel
{
	const char *name;			/* the projection, e.g. es_accounts */
	const char *table;			/* its rows, e.g. es_rm_accounts */
	const RmColumn *columns;	/* [0] is the id; then the model's; then the last three */
	int			ncolumns;
	void		(*fold) (RmRow *row, const RmEvent *ev);
	/* filled on first use */
	bool		ready;
	uint32		store_generation;	/* of relid */
	Oid			relid;
	int16		typlen[RM_MAX_COLUMNS];
	bool		typbyval[RM_MAX_COLUMNS];
	EsPlan		insert_plan;
	EsPlan		update_plan;
	EsPlan		reset_one_plan;
	EsPlan		reset_all_plan;
};

/* Every model ends with these three columns. */
#define RM_COMMON_COLUMNS \
	{"updated_at", TIMESTAMPTZOID}, {"version", INT8OID}, {"last_position", INT8OID}
#define COL_UPDATED_AT(m)		((m)->ncolumns - 3)
#define COL_VERSION(m)			((m)->ncolumns - 2)
#define COL_LAST_POSITION(m)	((m)->ncolumns - 1)

/* Where the fold of the current event is, for error messages. */
typedef struct RmFoldContext
{
	const EsReadModel *model;
	const RmEvent *event;
} RmFoldContext;

static void
rm_error_context(void *arg)
{
	RmFoldContext *c = (RmFoldContext *) arg;

	errcontext("read model %s, event %s (%s, version " INT64_FORMAT " of %s)",
			   c->model->name, c->event->event_id, c->event->event_type, c->event->version,
			   c->event->aggregate_id);
}

/*-------------------------------------------------------------------------
 * Reading the event's data
 *-------------------------------------------------------------------------
 */

/* The value of key in the event's data; NULL when the key is absent. */
static JsonbValue *
rm_field(const RmEvent *ev, const char *key)
{
	return getKeyJsonValueFromContainer(&ev->data->root, key, strlen(key), NULL);
}

static bool
rm_has(const RmEvent *ev, const char *key)
{
	return rm_field(ev, key) != NULL;
}

/* The text of a scalar, or of an object or array in JSON. */
static Datum
rm_value_text(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			return PointerGetDatum(cstring_to_text_with_len(v->val.string.val, v->val.string.len));
		case jbvNumeric:
			return DirectFunctionCall1(textin, DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return CStringGetTextDatum(v->val.boolean ? "true" : "false");
		default:
			return CStringGetTextDatum(JsonbToCString(NULL, &JsonbValueToJsonb(v)->root, 0));
	}
}

static Datum
rm_value_numeric(JsonbValue *v, const char *key)
{
	if (v->type == jbvNumeric)
		return NumericGetDatum(v->val.numeric);
	if (v->type == jbvString)
		return DirectFunctionCall3(numeric_in,
								   CStringGetDatum(pnstrdup(v->val.string.val, v->val.string.len)),
								   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("field \"%s\" must be a number or a string holding one", key)));
	return (Datum) 0;			/* keep the compiler quiet */
}

/* Set column col from data.key (JSON null: NULL); absent key: unchanged.  True when present. */
static bool
rm_text(RmRow *row, int col, const RmEvent *ev, const char *key)
{
	JsonbValue *v = rm_field(ev, key);

	if (v == NULL)
		return false;
	row->nulls[col] = (v->type == jbvNull);
	if (!row->nulls[col])
		row->values[col] = rm_value_text(v);
	return true;
}

static bool
rm_numeric(RmRow *row, int col, const RmEvent *ev, const char *key)
{
	JsonbValue *v = rm_field(ev, key);

	if (v == NULL)
		return false;
	row->nulls[col] = (v->type == jbvNull);
	if (!row->nulls[col])
		row->values[col] = rm_value_numeric(v, key);
	return true;
}

static bool
rm_int4(RmRow *row, int col, const RmEvent *ev, const char *key)
{
	if (!rm_numeric(row, col, ev, key))
		return false;
	if (!row->nulls[col])
		row->values[col] = DirectFunctionCall1(numeric_int4, row->values[col]);
	return true;
}

static bool
rm_jsonb(RmRow *row, int col, const RmEvent *ev, const char *key)
{
	JsonbValue *v = rm_field(ev, key);

	if (v == NULL)
		return false;
	row->nulls[col] = (v->type == jbvNull);
	if (!row->nulls[col])
		row->values[col] = JsonbPGetDatum(JsonbValueToJsonb(v));
	return true;
}

/* A numeric the event must carry. */
static Datum
rm_required_numeric(const RmEvent *ev, const char *key)
{
	JsonbValue *v = rm_field(ev, key);

	if (v == NULL || v->type == jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s needs the field \"%s\"", ev->event_type, key)));
	return rm_value_numeric(v, key);
}

static void
rm_set_text(RmRow *row, int col, const char *value)
{
	row->values[col] = CStringGetTextDatum(value);
	row->nulls[col] = false;
}

static void
rm_set_time(RmRow *row, int col, const RmEvent *ev)
{
	row->values[col] = TimestampTzGetDatum(ev->occurred_at);
	row->nulls[col] = false;
}

static void
rm_set(RmRow *row, int col, Datum value)
{
	row->values[col] = value;
	row->nulls[col] = false;
}

/* col + amount, NULL counting as zero. */
static void
rm_add(RmRow *row, int col, Datum amount)
{
	if (row->nulls[col])
		rm_set(row, col, amount);
	else
		rm_set(row, col, DirectFunctionCall2(numeric_add, row->values[col], amount));
}

static Datum
rm_zero(void)
{
	return DirectFunctionCall1(int4_numeric, Int32GetDatum(0));
}

static bool
rm_is(const RmEvent *ev, const char *event_type)
{
	return strcmp(ev->event_type, event_type) == 0;
}

/*-------------------------------------------------------------------------
 * The models
 *-------------------------------------------------------------------------
 */

/* es_customers */
enum
{
	CU_ID, CU_NAME, CU_EMAIL, CU_PHONE, CU_ADDRESS, CU_KYC_STATUS, CU_RISK_RATING, CU_STATUS,
	CU_CREATED_AT
};

static const RmColumn customer_columns[] = {
	{"customer_id", TEXTOID}, {"name", TEXTOID}, {"email", TEXTOID}, {"phone", TEXTOID},
	{"address", JSONBOID}, {"kyc_status", TEXTOID}, {"risk_rating", TEXTOID}, {"status", TEXTOID},
	{"created_at", TIMESTAMPTZOID}, RM_COMMON_COLUMNS
};

static void
customer_fold(RmRow *row, const RmEvent *ev)
{
	if (!row->exists && row->nulls[CU_STATUS])
	{
		rm_set_text(row, CU_KYC_STATUS, "pending");
		rm_set_text(row, CU_STATUS, "active");
	}
	if (rm_is(ev, "CUSTOMER_CREATED") || rm_is(ev, "CUSTOMER_UPDATED"))
	{
		rm_text(row, CU_NAME, ev, "name");
		rm_text(row, CU_EMAIL, ev, "email");
		rm_text(row, CU_PHONE, ev, "phone");
		rm_jsonb(row, CU_ADDRESS, ev, "address");
		rm_text(row, CU_KYC_STATUS, ev, "kyc_status");
		rm_text(row, CU_RISK_RATING, ev, "risk_rating");
		if (rm_is(ev, "CUSTOMER_CREATED"))
			rm_set_time(row, CU_CREATED_AT, ev);
	}
	else if (rm_is(ev, "CUSTOMER_KYC_COMPLETED"))
	{
		if (!rm_text(row, CU_KYC_STATUS, ev, "kyc_status"))
			rm_set_text(row, CU_KYC_STATUS, "verified");
	}
	else if (rm_is(ev, "CUSTOMER_RISK_ASSESSED"))
	{
		if (!rm_text(row, CU_RISK_RATING, ev, "risk_rating") && !rm_text(row, CU_RISK_RATING, ev, "rating"))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s needs the field \"risk_rating\"", ev->event_type)));
	}
	else if (rm_is(ev, "CUSTOMER_DEACTIVATED"))
		rm_set_text(row, CU_STATUS, "inactive");
	else if (rm_is(ev, "CUSTOMER_REACTIVATED"))
		rm_set_text(row, CU_STATUS, "active");
	else if (rm_is(ev, "CUSTOMER_ADDRESS_CHANGED"))
	{
		if (!rm_jsonb(row, CU_ADDRESS, ev, "address"))
			rm_set(row, CU_ADDRESS, JsonbPGetDatum(ev->data));
	}
}

/* es_accounts */
enum
{
	AC_ID, AC_CUSTOMER_ID, AC_ACCOUNT_TYPE, AC_CURRENCY, AC_BALANCE, AC_DAILY_LIMIT, AC_OVERDRAFT_LIMIT,
	AC_STATUS, AC_OPENED_AT, AC_CLOSED_AT
};

static const RmColumn account_columns[] = {
	{"account_id", TEXTOID}, {"customer_id", TEXTOID}, {"account_type", TEXTOID}, {"currency", TEXTOID},
	{"balance", NUMERICOID}, {"daily_limit", NUMERICOID}, {"overdraft_limit", NUMERICOID},
	{"status", TEXTOID}, {"opened_at", TIMESTAMPTZOID}, {"closed_at", TIMESTAMPTZOID}, RM_COMMON_COLUMNS
};

static void
account_fold(RmRow *row, const RmEvent *ev)
{
	if (!row->exists && row->nulls[AC_STATUS])
	{
		rm_set(row, AC_BALANCE, rm_zero());
		rm_set_text(row, AC_STATUS, "open");
	}
	if (rm_is(ev, "ACCOUNT_OPENED"))
	{
		rm_text(row, AC_CUSTOMER_ID, ev, "customer_id");
		if (!rm_text(row, AC_ACCOUNT_TYPE, ev, "account_type"))
			rm_text(row, AC_ACCOUNT_TYPE, ev, "type");
		rm_text(row, AC_CURRENCY, ev, "currency");
		if (!rm_numeric(row, AC_BALANCE, ev, "balance"))
			rm_numeric(row, AC_BALANCE, ev, "initial_balance");
		if (row->nulls[AC_BALANCE])
			rm_set(row, AC_BALANCE, rm_zero());
		rm_numeric(row, AC_DAILY_LIMIT, ev, "daily_limit");
		rm_numeric(row, AC_OVERDRAFT_LIMIT, ev, "overdraft_limit");
		rm_set_time(row, AC_OPENED_AT, ev);
	}
	else if (rm_is(ev, "ACCOUNT_BALANCE_UPDATED"))
	{
		/* The new balance, or a signed change of it. */
		if (rm_has(ev, "balance"))
			rm_set(row, AC_BALANCE, rm_required_numeric(ev, "balance"));
		else if (rm_has(ev, "amount"))
			rm_add(row, AC_BALANCE, rm_required_numeric(ev, "amount"));
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s needs the field \"balance\" (the new balance) or \"amount\" (a signed change)",
							ev->event_type)));
	}
	else if (rm_is(ev, "ACCOUNT_LIMIT_CHANGED"))
	{
		bool		daily = rm_numeric(row, AC_DAILY_LIMIT, ev, "daily_limit");
		bool		overdraft = rm_numeric(row, AC_OVERDRAFT_LIMIT, ev, "overdraft_limit");

		if (!daily && !overdraft)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s needs the field \"daily_limit\" or \"overdraft_limit\"", ev->event_type)));
	}
	else if (rm_is(ev, "ACCOUNT_STATUS_CHANGED"))
	{
		if (!rm_text(row, AC_STATUS, ev, "status") || row->nulls[AC_STATUS])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s needs the field \"status\"", ev->event_type)));
	}
	else if (rm_is(ev, "ACCOUNT_FROZEN"))
		rm_set_text(row, AC_STATUS, "frozen");
	else if (rm_is(ev, "ACCOUNT_UNFROZEN"))
		rm_set_text(row, AC_STATUS, "open");
	else if (rm_is(ev, "ACCOUNT_CLOSED"))
	{
		rm_set_text(row, AC_STATUS, "closed");
		rm_set_time(row, AC_CLOSED_AT, ev);
	}
}

/* es_transactions */
enum
{
	TX_ID, TX_ACCOUNT_ID, TX_AMOUNT, TX_CURRENCY, TX_DIRECTION, TX_DESCRIPTION, TX_STATUS, TX_CREATED_AT,
	TX_POSTED_AT, TX_SETTLED_AT, TX_REVERSED_AT, TX_REVERSAL_REASON, TX_FAILED_AT, TX_FAILURE_REASON
};

static const RmColumn transaction_columns[] = {
	{"transaction_id", TEXTOID}, {"account_id", TEXTOID}, {"amount", NUMERICOID}, {"currency", TEXTOID},
	{"direction", TEXTOID}, {"description", TEXTOID}, {"status", TEXTOID}, {"created_at", TIMESTAMPTZOID},
	{"posted_at", TIMESTAMPTZOID}, {"settled_at", TIMESTAMPTZOID}, {"reversed_at", TIMESTAMPTZOID},
	{"reversal_reason", TEXTOID}, {"failed_at", TIMESTAMPTZOID}, {"failure_reason", TEXTOID},
	RM_COMMON_COLUMNS
};

static void
transaction_fold(RmRow *row, const RmEvent *ev)
{
	if (!row->exists && row->nulls[TX_STATUS])
		rm_set_text(row, TX_STATUS, "created");
	if (rm_is(ev, "TRANSACTION_CREATED"))
	{
		rm_text(row, TX_ACCOUNT_ID, ev, "account_id");
		rm_numeric(row, TX_AMOUNT, ev, "amount");
		rm_text(row, TX_CURRENCY, ev, "currency");
		if (!rm_text(row, TX_DIRECTION, ev, "direction"))
			rm_text(row, TX_DIRECTION, ev, "type");
		if (!row->nulls[TX_DIRECTION])
		{
			char	   *direction = TextDatumGetCString(row->values[TX_DIRECTION]);

			if (strcmp(direction, "credit") != 0 && strcmp(direction, "debit") != 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("direction must be \"credit\" or \"debit\", not \"%s\"", direction)));
		}
		rm_text(row, TX_DESCRIPTION, ev, "description");
		rm_set_time(row, TX_CREATED_AT, ev);
	}
	else if (rm_is(ev, "TRANSACTION_POSTED"))
	{
		rm_set_text(row, TX_STATUS, "posted");
		rm_set_time(row, TX_POSTED_AT, ev);
	}
	else if (rm_is(ev, "TRANSACTION_SETTLED"))
	{
		rm_set_text(row, TX_STATUS, "settled");
		rm_set_time(row, TX_SETTLED_AT, ev);
	}
	else if (rm_is(ev, "TRANSACTION_REVERSED"))
	{
		rm_set_text(row, TX_STATUS, "reversed");
		rm_set_time(row, TX_REVERSED_AT, ev);
		rm_text(row, TX_REVERSAL_REASON, ev, "reason");
	}
	else if (rm_is(ev, "TRANSACTION_FAILED"))
	{
		rm_set_text(row, TX_STATUS, "failed");
		rm_set_time(row, TX_FAILED_AT, ev);
		rm_text(row, TX_FAILURE_REASON, ev, "reason");
	}
}

/* es_payments */
enum
{
	PA_ID, PA_FROM_ACCOUNT, PA_TO_ACCOUNT, PA_AMOUNT, PA_CURRENCY, PA_STATUS, PA_INITIATED_AT,
	PA_AUTHORIZED_AT, PA_COMPLETED_AT, PA_FAILED_AT, PA_FAILURE_REASON, PA_REFUNDED_AT, PA_REFUNDED_AMOUNT,
	PA_CANCELLED_AT
};

static const RmColumn payment_columns[] = {
	{"payment_id", TEXTOID}, {"from_account", TEXTOID}, {"to_account", TEXTOID}, {"amount", NUMERICOID},
	{"currency", TEXTOID}, {"status", TEXTOID}, {"initiated_at", TIMESTAMPTZOID},
	{"authorized_at", TIMESTAMPTZOID}, {"completed_at", TIMESTAMPTZOID}, {"failed_at", TIMESTAMPTZOID},
	{"failure_reason", TEXTOID}, {"refunded_at", TIMESTAMPTZOID}, {"refunded_amount", NUMERICOID},
	{"cancelled_at", TIMESTAMPTZOID}, RM_COMMON_COLUMNS
};

static void
payment_fold(RmRow *row, const RmEvent *ev)
{
	if (!row->exists && row->nulls[PA_STATUS])
		rm_set_text(row, PA_STATUS, "initiated");
	if (rm_is(ev, "PAYMENT_INITIATED"))
	{
		rm_text(row, PA_FROM_ACCOUNT, ev, "from_account");
		rm_text(row, PA_TO_ACCOUNT, ev, "to_account");
		rm_numeric(row, PA_AMOUNT, ev, "amount");
		rm_text(row, PA_CURRENCY, ev, "currency");
		rm_set_time(row, PA_INITIATED_AT, ev);
	}
	else if (rm_is(ev, "PAYMENT_AUTHORIZED"))
	{
		rm_set_text(row, PA_STATUS, "authorized");
		rm_set_time(row, PA_AUTHORIZED_AT, ev);
	}
	else if (rm_is(ev, "PAYMENT_COMPLETED"))
	{
		rm_set_text(row, PA_STATUS, "completed");
		rm_set_time(row, PA_COMPLETED_AT, ev);
	}
	else if (rm_is(ev, "PAYMENT_FAILED"))
	{
		rm_set_text(row, PA_STATUS, "failed");
		rm_set_time(row, PA_FAILED_AT, ev);
		rm_text(row, PA_FAILURE_REASON, ev, "reason");
	}
	else if (rm_is(ev, "PAYMENT_REFUNDED"))
	{
		/* A refund of the amount given, else of the whole payment; refunds add up. */
		rm_set_text(row, PA_STATUS, "refunded");
		rm_set_time(row, PA_REFUNDED_AT, ev);
		if (rm_has(ev, "amount"))
			rm_add(row, PA_REFUNDED_AMOUNT, rm_required_numeric(ev, "amount"));
		else if (!row->nulls[PA_AMOUNT])
			rm_add(row, PA_REFUNDED_AMOUNT, row->values[PA_AMOUNT]);
	}
	else if (rm_is(ev, "PAYMENT_CANCELLED"))
	{
		rm_set_text(row, PA_STATUS, "cancelled");
		rm_set_time(row, PA_CANCELLED_AT, ev);
	}
}

/* es_loans */
enum
{
	LO_ID, LO_CUSTOMER_ID, LO_PRODUCT, LO_REQUESTED_AMOUNT, LO_APPROVED_AMOUNT, LO_INTEREST_RATE,
	LO_TERM_MONTHS, LO_STATUS, LO_APPLIED_AT, LO_APPROVED_AT, LO_REJECTED_AT, LO_REJECTION_REASON,
	LO_DISBURSED_AT, LO_DISBURSED_AMOUNT, LO_REPAID_AMOUNT, LO_REPAYMENTS, LO_OUTSTANDING_BALANCE,
	LO_DEFAULTED_AT, LO_PAID_OFF_AT
};

static const RmColumn loan_columns[] = {
	{"loan_id", TEXTOID}, {"customer_id", TEXTOID}, {"product", TEXTOID}, {"requested_amount", NUMERICOID},
	{"approved_amount", NUMERICOID}, {"interest_rate", NUMERICOID}, {"term_months", INT4OID},
	{"status", TEXTOID}, {"applied_at", TIMESTAMPTZOID}, {"approved_at", TIMESTAMPTZOID},
	{"rejected_at", TIMESTAMPTZOID}, {"rejection_reason", TEXTOID}, {"disbursed_at", TIMESTAMPTZOID},
	{"disbursed_amount", NUMERICOID}, {"repaid_amount", NUMERICOID}, {"repayments", INT4OID},
	{"outstanding_balance", NUMERICOID}, {"defaulted_at", TIMESTAMPTZOID}, {"paid_off_at", TIMESTAMPTZOID},
	RM_COMMON_COLUMNS
};

static void
loan_fold(RmRow *row, const RmEvent *ev)
{
	if (!row->exists && row->nulls[LO_STATUS])
	{
		rm_set_text(row, LO_STATUS, "submitted");
		rm_set(row, LO_REPAID_AMOUNT, rm_zero());
		row->values[LO_REPAYMENTS] = Int32GetDatum(0);
		row->nulls[LO_REPAYMENTS] = false;
	}
	if (rm_is(ev, "LOAN_APPLICATION_SUBMITTED"))
	{
		rm_text(row, LO_CUSTOMER_ID, ev, "customer_id");
		rm_text(row, LO_PRODUCT, ev, "product");
		rm_numeric(row, LO_REQUESTED_AMOUNT, ev, "amount");
		rm_int4(row, LO_TERM_MONTHS, ev, "term_months");
		rm_set_time(row, LO_APPLIED_AT, ev);
	}
	else if (rm_is(ev, "LOAN_APPROVED"))
	{
		rm_set_text(row, LO_STATUS, "approved");
		rm_set_time(row, LO_APPROVED_AT, ev);
		if (!rm_numeric(row, LO_APPROVED_AMOUNT, ev, "amount"))
		{
			row->values[LO_APPROVED_AMOUNT] = row->values[LO_REQUESTED_AMOUNT];
			row->nulls[LO_APPROVED_AMOUNT] = row->nulls[LO_REQUESTED_AMOUNT];
		}
		rm_numeric(row, LO_INTEREST_RATE, ev, "interest_rate");
		rm_int4(row, LO_TERM_MONTHS, ev, "term_months");
	}
	else if (rm_is(ev, "LOAN_REJECTED"))
	{
		rm_set_text(row, LO_STATUS, "rejected");
		rm_set_time(row, LO_REJECTED_AT, ev);
		rm_text(row, LO_REJECTION_REASON, ev, "reason");
	}
	else if (rm_is(ev, "LOAN_DISBURSED"))
	{
		rm_set_text(row, LO_STATUS, "disbursed");
		rm_set_time(row, LO_DISBURSED_AT, ev);
		if (!rm_numeric(row, LO_DISBURSED_AMOUNT, ev, "amount"))
		{
			row->values[LO_DISBURSED_AMOUNT] = row->values[LO_APPROVED_AMOUNT];
			row->nulls[LO_DISBURSED_AMOUNT] = row->nulls[LO_APPROVED_AMOUNT];
		}
		row->values[LO_OUTSTANDING_BALANCE] = row->values[LO_DISBURSED_AMOUNT];
		row->nulls[LO_OUTSTANDING_BALANCE] = row->nulls[LO_DISBURSED_AMOUNT];
	}
	else if (rm_is(ev, "LOAN_REPAYMENT_MADE"))
	{
		Datum		amount = rm_required_numeric(ev, "amount");

		rm_add(row, LO_REPAID_AMOUNT, amount);
		row->values[LO_REPAYMENTS] = Int32GetDatum(DatumGetInt32(row->values[LO_REPAYMENTS]) + 1);
		/* The lender's figure when the event gives one, else the balance less the payment. */
		if (!rm_numeric(row, LO_OUTSTANDING_BALANCE, ev, "outstanding_balance") &&
			!row->nulls[LO_OUTSTANDING_BALANCE])
			rm_set(row, LO_OUTSTANDING_BALANCE,
						   DirectFunctionCall2(numeric_sub, row->values[LO_OUTSTANDING_BALANCE], amount));
	}
	else if (rm_is(ev, "LOAN_DEFAULTED"))
	{
		rm_set_text(row, LO_STATUS, "defaulted");
		rm_set_time(row, LO_DEFAULTED_AT, ev);
		rm_numeric(row, LO_OUTSTANDING_BALANCE, ev, "outstanding_balance");
	}
	else if (rm_is(ev, "LOAN_PAID_OFF"))
	{
		rm_set_text(row, LO_STATUS, "paid_off");
		rm_set_time(row, LO_PAID_OFF_AT, ev);
		rm_set(row, LO_OUTSTANDING_BALANCE, rm_zero());
	}
	else if (rm_is(ev, "LOAN_RESTRUCTURED"))
	{
		rm_numeric(row, LO_INTEREST_RATE, ev, "interest_rate");
		rm_int4(row, LO_TERM_MONTHS, ev, "term_months");
		rm_numeric(row, LO_OUTSTANDING_BALANCE, ev, "outstanding_balance");
	}
}

#define MODEL(name, table, columns, fold) \
	{name, table, columns, lengthof(columns), fold}

static EsReadModel models[] = {
	MODEL("es_customers", "es_rm_customers", customer_columns, customer_fold),
	MODEL("es_accounts", "es_rm_accounts", account_columns, account_fold),
	MODEL("es_transactions", "es_rm_transactions", transaction_columns, transaction_fold),
	MODEL("es_payments", "es_rm_payments", payment_columns, payment_fold),
	MODEL("es_loans", "es_rm_loans", loan_columns, loan_fold),
};

/*-------------------------------------------------------------------------
 * Rows: load, fold, save
 *-------------------------------------------------------------------------
 */

/* Build a model's plans from its columns (once per backend). */
static void
rm_prepare(EsReadModel *m)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	StringInfoData cols;
	StringInfoData params;
	StringInfoData sets;
	int			i;

	Assert(m->ncolumns <= RM_MAX_COLUMNS);
	initStringInfo(&cols);
	initStringInfo(&params);
	initStringInfo(&sets);
	for (i = 0; i < m->ncolumns; i++)
	{
		get_typlenbyval(m->columns[i].type, &m->typlen[i], &m->typbyval[i]);
		appendStringInfo(&cols, "%s%s", i ? ", " : "", m->columns[i].name);
		appendStringInfo(&params, "%s$%d", i ? ", " : "", i + 1);
		if (i > 0)
			appendStringInfo(&sets, "%s%s = $%d", i > 1 ? ", " : "", m->columns[i].name, i + 1);
		m->insert_plan.argtypes[i] = m->columns[i].type;
		m->update_plan.argtypes[i] = m->columns[i].type;
	}
	m->insert_plan.sql = psprintf("INSERT INTO @extschema@.%s (%s) VALUES (%s)",
								  m->table, cols.data, params.data);
	m->insert_plan.nargs = m->ncolumns;
	m->update_plan.sql = psprintf("UPDATE @extschema@.%s SET %s WHERE %s OPERATOR(pg_catalog.=) $1",
								  m->table, sets.data, m->columns[0].name);
	m->update_plan.nargs = m->ncolumns;
	m->reset_one_plan.sql = psprintf("DELETE FROM @extschema@.%s WHERE %s OPERATOR(pg_catalog.=) $1",
									 m->table, m->columns[0].name);
	m->reset_one_plan.nargs = 1;
	m->reset_one_plan.argtypes[0] = TEXTOID;
	m->reset_all_plan.sql = psprintf("DELETE FROM @extschema@.%s", m->table);
	m->reset_all_plan.nargs = 0;
	MemoryContextSwitchTo(old);
	m->ready = true;
}

static void
rm_row_init(const EsReadModel *m, RmRow *row, const char *aggregate_id)
{
	int			i;

	for (i = 0; i < m->ncolumns; i++)
		row->nulls[i] = true;
	row->values[0] = CStringGetTextDatum(aggregate_id);
	row->nulls[0] = false;
	row->values[COL_VERSION(m)] = Int64GetDatum(0);
	row->exists = false;
}

/*
 * The table of m in store s, checked against the column list (the code
 * reads and writes rows by column number).
 */
static Oid
rm_relation(EsReadModel *m, EsStore *s)
{
	int			i;

	if (OidIsValid(m->relid) && m->store_generation == s->generation)
		return m->relid;
	m->relid = get_relname_relid(m->table, s->nspid);
	if (!OidIsValid(m->relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table \"%s\" of ultracore_es does not exist", m->table),
				 errhint("The extension is damaged: run ALTER EXTENSION ultracore_es UPDATE, or recreate it.")));
	for (i = 0; i < m->ncolumns; i++)
	{
		char	   *attname = get_attname(m->relid, i + 1, true);

		if (attname == NULL || strcmp(attname, m->columns[i].name) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("column %d of %s is \"%s\", expected \"%s\"",
							i + 1, m->table, attname ? attname : "(dropped)", m->columns[i].name),
					 errhint("The table was altered outside the extension's scripts; restore its definition.")));
	}
	m->store_generation = s->generation;
	return m->relid;
}

/*
 * The stored row of aggregate_id, copied into the current context; or a
 * new one.  A primary-key probe with SnapshotSelf, without the executor (this
 * is on the write path of inline projections): nobody else writes the row
 * meanwhile (see rm_save), so the committed row plus our own changes is the
 * row.
 */
static void
rm_load(EsReadModel *m, EsStore *s, RmRow *row, const char *aggregate_id)
{
	Relation	rel = table_open(rm_relation(m, s), RowExclusiveLock);
	Relation	idx = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	ScanKeyData key;
	IndexScanDesc scan;
	int			i;

	rm_row_init(m, row, aggregate_id);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(aggregate_id));
	key.sk_collation = C_COLLATION_OID;
	CommandCounterIncrement();	/* see what this transaction wrote before */
	scan = index_beginscan(rel, idx, SnapshotSelf, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		slot_getallattrs(slot);
		for (i = 0; i < m->ncolumns; i++)
		{
			row->nulls[i] = slot->tts_isnull[i];
			row->values[i] = row->nulls[i] ? (Datum) 0
				: datumCopy(slot->tts_values[i], m->typbyval[i], m->typlen[i]);
		}
		row->exists = true;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, NoLock);
	table_close(rel, NoLock);
}

/*
 * Write the row back: an UPDATE of the row loaded, or an INSERT of a new
 * one.  Nobody else writes it meanwhile: inline, the append holds the
 * aggregate's lock; async, the worker is its only writer; rebuilds hold the
 * locks that keep both away (projection.c).
 */
static void
rm_save(EsReadModel *m, RmRow *row)
{
	char		nulls[RM_MAX_COLUMNS];
	int			i;

	for (i = 0; i < m->ncolumns; i++)
		nulls[i] = row->nulls[i] ? 'n' : ' ';
	if (row->exists)
	{
		if (SPI_execute_plan(es_plan(&m->update_plan), row->values, nulls, false, 0) != SPI_OK_UPDATE ||
			SPI_processed != 1)
			elog(ERROR, "could not update %s row", m->name);
	}
	else if (SPI_execute_plan(es_plan(&m->insert_plan), row->values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert %s row", m->name);
	row->exists = true;
}

/* Fold one event into row, unless it was folded before; true when folded. */
static bool
rm_fold(const EsReadModel *m, RmRow *row, const RmEvent *ev)
{
	ErrorContextCallback errcallback;
	RmFoldContext c = {m, ev};

	if (ev->version <= DatumGetInt64(row->values[COL_VERSION(m)]))
		return false;
	errcallback.callback = rm_error_context;
	errcallback.arg = &c;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	m->fold(row, ev);
	error_context_stack = errcallback.previous;
	row->values[COL_UPDATED_AT(m)] = TimestampTzGetDatum(ev->occurred_at);
	row->nulls[COL_UPDATED_AT(m)] = false;
	row->values[COL_VERSION(m)] = Int64GetDatum(ev->version);
	row->nulls[COL_VERSION(m)] = false;
	row->values[COL_LAST_POSITION(m)] = Int64GetDatum(ev->position);
	row->nulls[COL_LAST_POSITION(m)] = false;
	return true;
}

static void
rm_event_from_values(RmEvent *ev, Datum *values, bool *nulls)
{
	ev->event_id = TextDatumGetCString(values[EV_EVENT_ID]);
	ev->event_type = TextDatumGetCString(values[EV_EVENT_TYPE]);
	ev->aggregate_id = TextDatumGetCString(values[EV_AGGREGATE_ID]);
	ev->version = DatumGetInt64(values[EV_VERSION]);
	ev->position = DatumGetInt64(values[EV_POSITION]);
	ev->occurred_at = DatumGetTimestampTz(values[EV_OCCURRED_AT]);
	ev->data = DatumGetJsonbP(values[EV_DATA]);
}

/*-------------------------------------------------------------------------
 * Entry points
 *-------------------------------------------------------------------------
 */

EsReadModel *
es_read_model(const char *name)
{
	int			i;

	for (i = 0; i < (int) lengthof(models); i++)
		if (strcmp(models[i].name, name) == 0)
		{
			if (!models[i].ready)
				rm_prepare(&models[i]);
			return &models[i];
		}
	return NULL;
}

/*
 * es_read_model_apply: fold events (es_events rows of one aggregate, in
 * version order) into the model's row, written once.  Returns how many were
 * folded (not skipped as folded before).  Needs SPI, as the store's owner.
 */
int
es_read_model_apply(EsReadModel *m, EsStore *s, TupleDesc desc, HeapTuple *events, int nevents)
{
	Datum		values[EV_NATTS];
	bool		nulls[EV_NATTS];
	RmRow		row;
	int			folded = 0;
	int			i;

	for (i = 0; i < nevents; i++)
	{
		RmEvent		ev;

		heap_deform_tuple(events[i], desc, values, nulls);
		rm_event_from_values(&ev, values, nulls);
		if (i == 0)
			rm_load(m, s, &row, ev.aggregate_id);
		if (rm_fold(m, &row, &ev))
			folded++;
	}
	if (folded > 0)
		rm_save(m, &row);
	return folded;
}

/* es_read_model_reset: delete the rows of one aggregate, or all (NULL). */
void
es_read_model_reset(EsReadModel *m, const char *aggregate_id)
{
	Datum		arg;

	if (aggregate_id == NULL)
	{
		if (SPI_execute_plan(es_plan(&m->reset_all_plan), NULL, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not reset %s", m->name);
		return;
	}
	arg = CStringGetTextDatum(aggregate_id);
	if (SPI_execute_plan(es_plan(&m->reset_one_plan), &arg, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not reset %s row \"%s\"", m->name, aggregate_id);
}

/* The events of a rebuild, by aggregate and version, up to a commit-order bound. */
static EsPlan rebuild_plan = {
	"SELECT e.* FROM @extschema@.es_events e"
	" WHERE e.event_type OPERATOR(pg_catalog.=) ANY ($1)"
	"   AND ($2::pg_catalog.text IS NULL OR e.aggregate_id OPERATOR(pg_catalog.=) $2)"
	"   AND ROW(e.tx_id, e.position) OPERATOR(pg_catalog.<=) ROW($3, $4)"
	" ORDER BY e.aggregate_id, e.version",
	4, {TEXTARRAYOID, TEXTOID, XID8OID, INT8OID}
};

typedef struct RmRebuild
{
	EsReadModel *model;
	MemoryContext event_cxt;	/* reset after each event */
	MemoryContext row_cxt[2];	/* the row lives in one, is copied to the other */
	int			current;
	RmRow		row;
	bool		started;
	char		aggregate_id[ES_MAX_ID_LEN + 1];
	int64		folded;
} RmRebuild;

/* Copy the row into the other row context and empty the one it was in. */
static void
rm_rebuild_keep_row(RmRebuild *r)
{
	EsReadModel *m = r->model;
	int			next = 1 - r->current;
	MemoryContext old = MemoryContextSwitchTo(r->row_cxt[next]);
	int			i;

	for (i = 0; i < m->ncolumns; i++)
		if (!r->row.nulls[i])
			r->row.values[i] = datumCopy(r->row.values[i], m->typbyval[i], m->typlen[i]);
	MemoryContextSwitchTo(old);
	MemoryContextReset(r->row_cxt[r->current]);
	r->current = next;
}

static void
rm_rebuild_event(Datum *values, bool *nulls, void *arg)
{
	RmRebuild  *r = (RmRebuild *) arg;
	MemoryContext old = MemoryContextSwitchTo(r->event_cxt);
	RmEvent		ev;

	rm_event_from_values(&ev, values, nulls);
	if (!r->started || strcmp(r->aggregate_id, ev.aggregate_id) != 0)
	{
		if (r->started)
			rm_save(r->model, &r->row);
		r->started = true;
		strlcpy(r->aggregate_id, ev.aggregate_id, sizeof(r->aggregate_id));
		rm_row_init(r->model, &r->row, ev.aggregate_id);
	}
	if (rm_fold(r->model, &r->row, &ev))
		r->folded++;
	rm_rebuild_keep_row(r);
	MemoryContextSwitchTo(old);
	MemoryContextReset(r->event_cxt);
}

/*
 * es_read_model_rebuild: fold the events of event_types up to (bound_tx,
 * bound_position) in commit order into the model's rows of one aggregate (or
 * all, NULL), which the caller deleted first; each row written once.
 * Returns the number of events folded.  The caller holds the locks that keep
 * the rows from moving meanwhile (projection.c).
 */
int64
es_read_model_rebuild(EsReadModel *m, ArrayType *event_types, const char *aggregate_id,
					  FullTransactionId bound_tx, int64 bound_position)
{
	RmRebuild	r;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	memset(&r, 0, sizeof(r));
	r.model = m;
	r.event_cxt = AllocSetContextCreate(CurrentMemoryContext, "ultracore_es rebuilt event",
										ALLOCSET_DEFAULT_SIZES);
	r.row_cxt[0] = AllocSetContextCreate(CurrentMemoryContext, "ultracore_es rebuilt row",
										 ALLOCSET_SMALL_SIZES);
	r.row_cxt[1] = AllocSetContextCreate(CurrentMemoryContext, "ultracore_es rebuilt row",
										 ALLOCSET_SMALL_SIZES);
	args[0] = PointerGetDatum(event_types);
	args[1] = aggregate_id ? CStringGetTextDatum(aggregate_id) : (Datum) 0;
	nulls[1] = aggregate_id ? ' ' : 'n';
	args[2] = FullTransactionIdGetDatum(bound_tx);
	args[3] = Int64GetDatum(bound_position);
	es_read_rows(&rebuild_plan, args, nulls, false, false, 0, rm_rebuild_event, &r);
	if (r.started)
		rm_save(m, &r.row);
	MemoryContextDelete(r.event_cxt);
	MemoryContextDelete(r.row_cxt[0]);
	MemoryContextDelete(r.row_cxt[1]);
	return r.folded;
}

/*
 * The projection functions: fold one event (an es_events row) into the
 * model's row, as the owner of the store.  The worker calls them for async
 * projections; anyone with EXECUTE may call them.
 */
static Datum
rm_project_one(FunctionCallInfo fcinfo, const char *model)
{
	HeapTupleHeader th;
	HeapTupleData tuple;
	HeapTuple	events[1];
	TupleDesc	desc;
	EsReadModel *m;
	EsCall		call;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event must not be null")));
	th = PG_GETARG_HEAPTUPLEHEADER(0);
	es_call_begin(fcinfo, &call);
	m = es_read_model(model);
	desc = lookup_rowtype_tupdesc(call.store->events_rowtype, -1);
	tuple.t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = th;
	events[0] = &tuple;
	(void) es_read_model_apply(m, call.store, desc, events, 1);
	ReleaseTupleDesc(desc);
	es_call_end(&call);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(es_project_customers);
Datum
es_project_customers(PG_FUNCTION_ARGS)
{
	return rm_project_one(fcinfo, "es_customers");
}

PG_FUNCTION_INFO_V1(es_project_accounts);
Datum
es_project_accounts(PG_FUNCTION_ARGS)
{
	return rm_project_one(fcinfo, "es_accounts");
}

PG_FUNCTION_INFO_V1(es_project_transactions);
Datum
es_project_transactions(PG_FUNCTION_ARGS)
{
	return rm_project_one(fcinfo, "es_transactions");
}

PG_FUNCTION_INFO_V1(es_project_payments);
Datum
es_project_payments(PG_FUNCTION_ARGS)
{
	return rm_project_one(fcinfo, "es_payments");
}

PG_FUNCTION_INFO_V1(es_project_loans);
Datum
es_project_loans(PG_FUNCTION_ARGS)
{
	return rm_project_one(fcinfo, "es_loans");
}
