"""Running under systemd: the notify protocol (:mod:`.notify`) and socket activation
(:mod:`.activation`), both spoken with the standard library, both inert outside systemd."""
