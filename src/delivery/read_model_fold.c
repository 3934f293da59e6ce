/*-------------------------------------------------------------------------
 *
 * read_model_fold.c
 *	  What each event does to its row in the guide's five read models
 *	  (customers, accounts, transactions, payments, loans): the models'
 *	  columns and folds, and the helpers that read an event's JSON data
 *	  into a row's columns.
 *
 * A fold is plain C on a row held in memory (RmRow), and knows nothing of
 * where the row comes from or goes: read_model.c loads it, skips the events
 * folded before, calls the fold, and saves it.  Money is numeric from end
 * to end: JSON numbers are taken as they are written, JSON strings are
 * parsed as numeric, never through floating point.  A value of the wrong
 * kind is an error naming the field (read_model.c adds the event and the
 * model as the error's context).
 *
 * Allocates in the caller's memory context; no SPI, no locks.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/read_model_internal.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

/*-------------------------------------------------------------------------
 * Reading the event's data
 *-------------------------------------------------------------------------
 */

/* The value of key in the event's data; NULL when the key is absent. */
static JsonbValue *
rm_field(const RmEvent *ev, const char *key)
{
	/* Appends store objects; a row written by hand may hold anything. */
	if (!JB_ROOT_IS_OBJECT(ev->data))
		return NULL;
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

/* A whole number that fits an integer column (a count of months): 3.5 is no such thing, nor is 1e10. */
static bool
rm_int4(RmRow *row, int col, const RmEvent *ev, const char *key)
{
	Datum		n;
	bool		overflow = false;
	int32		value;

	if (!rm_numeric(row, col, ev, key))
		return false;
	if (row->nulls[col])
		return true;
	n = row->values[col];
	value = numeric_int4_opt_error(DatumGetNumeric(n), &overflow);
	if (overflow || !DatumGetBool(DirectFunctionCall2(numeric_eq, n,
													   DirectFunctionCall2(numeric_trunc, n, Int32GetDatum(0)))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("field \"%s\" must be a whole number of at most %d", key, PG_INT32_MAX)));
	row->values[col] = Int32GetDatum(value);
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

/*-------------------------------------------------------------------------
 * The table of models
 *-------------------------------------------------------------------------
 */

#define MODEL(name, table, columns, fold) \
	{name, table, columns, lengthof(columns), fold}

EsReadModel es_read_models[] = {
	MODEL("es_customers", "es_rm_customers", customer_columns, customer_fold),
	MODEL("es_accounts", "es_rm_accounts", account_columns, account_fold),
	MODEL("es_transactions", "es_rm_transactions", transaction_columns, transaction_fold),
	MODEL("es_payments", "es_rm_payments", payment_columns, payment_fold),
	MODEL("es_loans", "es_rm_loans", loan_columns, loan_fold),
};

const int	es_nread_models = lengthof(es_read_models);
