// Package metrics holds cgfs's Prometheus metrics: operations served and
// refusals by rule (access rules and the answers cgfs makes itself),
// labelled by view. A Metrics is built by New with the registry it
// belongs to; nothing is registered globally.
package metrics
