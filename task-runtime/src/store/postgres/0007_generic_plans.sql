-- The claim and settle functions run the same statements with new arrays on every call.
-- PL/pgSQL plans them anew for each call's values (a custom plan) unless told otherwise,
-- and planning them cost about as much as running them; one generic plan per connection
-- does the same work.
ALTER FUNCTION task_runtime.claim(text, bigint, bigint, integer, text[], integer[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION task_runtime.settle(bigint, text[], int8[], text[], text[], int8[], text[], int8[],
                                   int8[], text[], int8[], text[], int8[])
    SET plan_cache_mode = force_generic_plan;
