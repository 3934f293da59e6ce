/* ultracore_es--1.0--1.1.sql: from release 1.0 to 1.1 */

\echo Use "ALTER EXTENSION ultracore_es UPDATE TO '1.1'" to load this file. \quit

-- Release 1.0 is what users have: ultracore_es--1.0.sql never changes.  A
-- new store is installed as 1.0 and then updated by this script (there is
-- no ultracore_es--1.1.sql), so a fresh 1.1 and an updated 1.0 are the same
-- by construction, and test/t/007_upgrade.pl checks that an update of a
-- store full of data gives exactly that catalog and keeps every event and
-- checkpoint.  Every schema change of 1.1 goes here, with its reason.
--
-- The 1.1 library keeps serving the 1.0 catalog until this script runs:
-- the C functions the 1.0 script names keep their symbols and arguments.
