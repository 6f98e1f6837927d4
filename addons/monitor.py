"""The script mitmdump loads; the addon itself lives in `llm_monitor.proxy.addon`.

    mitmdump -s addons/monitor.py --mode reverse:https://api.openai.com@8080 \
        --set monitor_db=llm-monitor.db

mitmproxy runs a script outside the import system, so it holds nothing but this import.
"""

from llm_monitor.proxy.addon import Monitor

addons = [Monitor()]
