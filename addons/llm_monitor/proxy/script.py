"""The script `llm-monitor up` gives mitmdump (`-s`): the monitor addon, from the installed
package. `addons/monitor.py` is the same for a checkout, for the documented mitmdump line."""

from llm_monitor.proxy.addon import Monitor

addons = [Monitor()]
