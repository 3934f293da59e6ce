/*-------------------------------------------------------------------------
 *
 * upcast.h
 *	  Upcasters (upcast.c): payloads upgraded on read, and the checks of a
 *	  user's function before it is registered as a reducer or upcaster.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_UPCAST_H
#define ES_UPCAST_H

extern bool es_upcast_row(Datum *values, bool *nulls);
extern void es_check_user_function(Oid fn, const char *role, int nargs, const Oid *argtypes,
								   const char *signature, Oid caller);

#endif							/* ES_UPCAST_H */
