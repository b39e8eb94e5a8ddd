// Package metrics holds cgfs's Prometheus metrics: requests served by
// operation and result with their latency, refusals by rule, the views
// served, and what each container uses, read from its host cgroups when
// /metrics is scraped. A Metrics is built by New with the registry it
// belongs to; nothing is registered globally, nothing polls.
package metrics
