<?php
header("X-Php: yes");
echo "php says ", isset($_GET["x"]) ? $_GET["x"] : "", "\n";
