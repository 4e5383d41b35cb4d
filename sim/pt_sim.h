/* `paytask sim`: the channel simulator, a small HTTP server on 127.0.0.1
 * that plays a payment channel, so that paytask can be tested end to end
 * without the internet. It speaks one dialect (--dialect, or sim.dialect):
 *
 *   plain   the `sim` channel of tasks/channels/sim.c (sim/pt_sim_plain.c):
 *             POST /v1/trades {"out_trade_no", "amount", "currency", "sim"}
 *             GET  /v1/trades/{no}           POST /v1/trades/{no}/close
 *           with per-trade instructions in the create's "sim" object:
 *             {"fail_times": N}  the first N creates answer 503 SYSTEM_ERROR
 *             {"decline": true}  a business refusal (402 DECLINED), final
 *             {"latency_ms": N}  answers after N ms
 *             {"timeout": true}  never answers (the caller times out)
 *   alipay  Alipay's gateway, POST /gateway.do (sim/pt_sim_alipay.c)
 *   wechat  WeChat Pay API v3, /v3/pay/transactions/… (sim/pt_sim_wechat.c)
 *
 * The alipay and wechat dialects check signatures and sign everything as
 * the channels do, with the keys and ids of the configuration (the sim.*
 * key files, channel.alipay.app_id / seller_id, channel.wechat.mchid /
 * appid / serial_no / platform_serial / apiv3_key), and send the payment
 * notification to the create's notify_url once the simulated buyer pays,
 * again and again on --notify-schedule-ms until it is acknowledged.
 *
 * A simulated buyer and the channel's behaviour are driven by the control
 * endpoints, in every dialect (plain JSON, no signatures):
 *   POST /v1/sim/rules {"out_trade_no": NO | "*", "pay_after_ms": N (-1:
 *        never), "callback": "send" | "withhold", "duplicate_callbacks": N,
 *        "create_fail_times": N, "latency_ms": N}      a trade's rule (or
 *        the default, "*") for when it is created and after; fields add up;
 *        a trade's own may add "lost_times": N (wechat: its next N queries
 *        and closes answer 404 ORDER_NOT_EXIST, as a lagging replica)
 *   POST /v1/sim/trades/{no}/pay    the buyer pays now (409 if closed or
 *        paid already); the notification goes out unless withheld
 *   POST /v1/sim/trades/{no}/scan   the buyer scans it (Alipay: the trade
 *        now exists for query and close; WeChat: USERPAYING)
 *   GET  /v1/sim/trades/{no}        {status, creates, queries, closes,
 *        callbacks_sent, callbacks_acked, paid_count, rule, …}, so a test
 *        can prove that nothing was created or charged twice
 *   GET  /v1/sim/stats              totals
 *   POST /v1/sim/outage {"on": true|false}   every new create fails with
 *        the dialect's system error (503, 20000, 500 SYSTEM_ERROR), and in
 *        the alipay and wechat dialects every query and close too
 *   POST /v1/sim/clock {"behind_ms": N}   the channel's clock runs N ms
 *        (0..86400000) behind ours: a trade's time_expire passes that much
 *        later (an unscanned Alipay code stays payable until then, whatever
 *        close paytask sent)
 *   GET  /healthz
 * Flags: --listen, --latency-ms, --error-rate, --pay-after-ms (default -1:
 * the buyer pays only when told), --notify-schedule-ms (default
 * 500,1000,2000,5000; the channels' real schedules are minutes to hours). */
#ifndef PT_SIM_H
#define PT_SIM_H

int pt_sim_main(int argc, char **argv);

#endif
