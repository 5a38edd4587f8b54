#!/usr/bin/env perl
# Queue trigger, Perl: a JSON order in; a receipt to the `receipt` queue, the priced order
# to the blob bound to $return.
use strict;
use warnings;
use JSON::PP;

my $json = JSON::PP->new->utf8->canonical;
my $request = $json->decode(do { local $/; <STDIN> });
my $order = $json->decode($request->{inputs}{msg});    # queue messages arrive as text
my $total = 0;
$total += $_->{price} * ($_->{quantity} // 1) for @{ $order->{items} };
my $attempt = $request->{triggerMetadata}{DequeueCount} // 1;
printf STDERR "order %s: %d items, total %.2f (attempt %s)\n",
    $order->{id}, scalar @{ $order->{items} }, $total, $attempt;
$order->{total} = $total + 0;
print $json->encode({
    returnValue => $order,
    outputs     => { receipt => sprintf("order %s: %.2f", $order->{id}, $total) },
});
