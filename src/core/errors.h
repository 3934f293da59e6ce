/*-------------------------------------------------------------------------
 *
 * errors.h
 *	  The SQLSTATEs of ultracore_es.
 *
 * Standard codes are used wherever one fits (22023 for a bad argument, 42704
 * for an unknown event type, 40001 for an append that would break commit
 * order, 54000 for an oversized event, 23505 for an event id reused with
 * other content).  Only what a client must branch on gets a code of its
 * own, in the implementation-defined class "UE":
 *
 *	UE001	wrong_expected_version	the aggregate's current version is not the
 *									one the append expected (optimistic
 *									concurrency conflict); the detail names the
 *									aggregate, the expected and the actual
 *									version.  Reload the aggregate and retry.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_ERRORS_H
#define ES_ERRORS_H

#define ERRCODE_ES_WRONG_EXPECTED_VERSION	MAKE_SQLSTATE('U','E','0','0','1')

#endif							/* ES_ERRORS_H */
