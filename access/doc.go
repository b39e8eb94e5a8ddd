// Package access decides who is calling cgfs and what they may do.
//
// A request carries the calling thread's id as the host sees it. Caller
// reads that thread's credentials from /proc; Policy judges them against
// the view's owner (the user namespace that owns the container) and
// names the rule behind every refusal so the host log and metrics can
// say why.
package access
