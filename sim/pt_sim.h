/* `paytask sim`: the channel simulator, a small HTTP server on 127.0.0.1
 * that plays a payment channel (the `sim` dialect of
 * tasks/channels/sim.c): it creates trades and answers with a qr_code,
 * takes per-trade instructions from the create request's "sim" object
 *   {"fail_times": N}   the first N create calls for this out_trade_no
 *                       answer 503 SYSTEM_ERROR
 *   {"decline": true}   a business refusal (402 DECLINED), final
 *   {"latency_ms": N}   answers after N ms
 *   {"timeout": true}   never answers (the caller times out)
 * and counts the calls per out_trade_no so tests can prove that no trade
 * was created twice:
 *   GET  /v1/sim/trades/{no}   {"create_calls", "creates_after_created", …}
 *   GET  /v1/sim/stats         totals
 *   POST /v1/sim/outage        {"on": true|false}: every create fails (503)
 * Global flags set a default latency and a random error rate. */
#ifndef PT_SIM_H
#define PT_SIM_H

int pt_sim_main(int argc, char **argv);

#endif
